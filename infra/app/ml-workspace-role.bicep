// Training on an Azure Machine Learning (v2) workspace: the built-in AzureML Data Scientist role on
// that workspace only. It covers jobs, MLflow tracking, the model registry and batch-endpoint
// invocation, and not writing the workspace or its computes (see the README).
param identityPrincipalId string
param workspaceName string

var azureMLDataScientist = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-12-01' existing = {
  name: workspaceName
}

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, identityPrincipalId, azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMLDataScientist)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}
