// The retraining autopilot in Azure: a Python Function App on the Flex Consumption plan, its storage
// (identity-only: no shared keys), Application Insights, a Key Vault for the Azure ML keys, and one
// user-assigned managed identity holding only the roles it needs (see infra/app/rbac.bicep).
targetScope = 'subscription'

@minLength(1)
@maxLength(40)
@description('azd environment name; names and tags derive from it.')
param environmentName string

@minLength(1)
@description('Region for every resource (Flex Consumption must be available there).')
param location string

@description('BES .../jobs URL of the training web service.')
param besJobsUrl string

@secure()
@description('API key of the training web service endpoint; stored in Key Vault, never in app settings.')
param besApiKey string

@description('DEPLOY_TARGETS JSON (see README). Classic keys: give api_key_setting names, stored in Key Vault.')
param deployTargets string = '[]'

@secure()
@description('JSON object of extra secrets for Key Vault, e.g. {"PROD-CLASSIC-KEY": "..."}; referenced by app settings.')
param extraSecrets string = '{}'

@description('Resource group holding the New (ARM) web services to update; empty = none (no role granted).')
param mlWebServicesResourceGroup string = ''

@description('ARM id of an Azure ML (v2) workspace a pipeline trains on; empty = none (no role granted).')
param mlWorkspaceId string = ''

@description('Send notifications to a new Event Grid topic (CloudEvents; the identity gets EventGrid Data Sender).')
param notificationsTopic bool = false

@description('Webhook for notifications (https); its signing secret goes in EXTRA_SECRETS as NOTIFY-WEBHOOK-SECRET.')
param notifyWebhookUrl string = ''

@description('NCRONTAB of scheduled retraining; empty = off.')
param retrainSchedule string = ''

@description('Object id of a developer to grant the same data roles (optional).')
param principalId string = ''

var abbreviations = loadJsonContent('abbreviations.json')
var token = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var appName = '${abbreviations.functionApp}${token}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbreviations.resourceGroup}${environmentName}'
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbreviations.managedIdentity}${token}'
    location: location
    tags: tags
  }
}

module storage 'core/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbreviations.storageAccount}${token}'
    location: location
    tags: tags
    deploymentContainer: 'app-package-${token}'
  }
}

module monitoring 'core/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbreviations.logAnalytics}${token}'
    applicationInsightsName: '${abbreviations.applicationInsights}${token}'
    location: location
    tags: tags
  }
}

module vault 'core/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbreviations.keyVault}${token}'
    location: location
    tags: tags
    besApiKey: besApiKey
    extraSecrets: extraSecrets
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: vault.outputs.name
    identityPrincipalId: identity.outputs.principalId
    developerPrincipalId: principalId
  }
}

module mlRole 'app/ml-webservice-role.bicep' = if (!empty(mlWebServicesResourceGroup)) {
  name: 'ml-webservice-role'
  scope: resourceGroup(empty(mlWebServicesResourceGroup) ? rg.name : mlWebServicesResourceGroup)
  params: {
    identityPrincipalId: identity.outputs.principalId
  }
}

// "/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.MachineLearningServices/workspaces/<ws>"
var mlWorkspace = split(empty(mlWorkspaceId) ? '/subscriptions/s/resourceGroups/rg/providers/p/workspaces/w' : mlWorkspaceId, '/')

module mlWorkspaceRole 'app/ml-workspace-role.bicep' = if (!empty(mlWorkspaceId)) {
  name: 'ml-workspace-role'
  scope: resourceGroup(mlWorkspace[2], mlWorkspace[4])
  params: {
    identityPrincipalId: identity.outputs.principalId
    workspaceName: last(mlWorkspace)
  }
}

module mlEvents 'app/ml-events.bicep' = if (!empty(mlWorkspaceId)) {
  name: 'ml-events'
  scope: resourceGroup(mlWorkspace[2], mlWorkspace[4])
  params: {
    workspaceName: last(mlWorkspace)
    tags: tags
  }
}

module eventsTopic 'app/events-topic.bicep' = if (notificationsTopic) {
  name: 'events-topic'
  scope: rg
  params: {
    name: 'evgt-${token}'
    location: location
    tags: tags
    identityPrincipalId: identity.outputs.principalId
  }
}

module app 'app/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    name: appName
    location: location
    tags: union(tags, { 'azd-service-name': 'app' })
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerUrl: '${storage.outputs.blobEndpoint}app-package-${token}'
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    besApiKeySecretUri: vault.outputs.besApiKeySecretUri
    keyVaultUri: vault.outputs.uri
    besJobsUrl: besJobsUrl
    deployTargets: deployTargets
    retrainSchedule: retrainSchedule
    notifyTopicEndpoint: notificationsTopic ? eventsTopic.outputs.endpoint : ''
    notifyWebhookUrl: notifyWebhookUrl
  }
  dependsOn: [ rbac ]
}

output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_KEY_VAULT_NAME string = vault.outputs.name
output TRAINING_CONTAINER string = 'training-data'
output ML_EVENTS_TOPIC string = empty(mlWorkspaceId) ? '' : mlEvents.outputs.name
output ML_WORKSPACE_RESOURCE_GROUP string = empty(mlWorkspaceId) ? '' : mlWorkspace[4]
