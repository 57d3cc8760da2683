// Deploying to New (ARM) web services needs read and write on Microsoft.MachineLearning/webServices
// and nothing else: a custom role with exactly those actions, assigned on the web services' group.
// (Classic endpoints are reached with their own API keys, from Key Vault, and need no role.)
param identityPrincipalId string

var actions = [
  'Microsoft.MachineLearning/webServices/read'
  'Microsoft.MachineLearning/webServices/write'
  'Microsoft.MachineLearning/locations/operationsStatus/read'
]

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'retraining-autopilot-ml-webservice-updater')
  properties: {
    roleName: 'Retraining autopilot web service updater (${resourceGroup().name})'
    description: 'Read and update Azure ML Studio (classic) New web service definitions.'
    type: 'CustomRole'
    permissions: [ { actions: actions, notActions: [] } ]
    assignableScopes: [ resourceGroup().id ]
  }
}

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, identityPrincipalId, role.id)
  properties: {
    roleDefinitionId: role.id
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}
