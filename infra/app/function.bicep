// The Function App on Flex Consumption (Linux, Python 3.12). Every connection is identity-based and
// every secret is a Key Vault reference resolved with the user-assigned identity.
param name string
param location string
param tags object
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerUrl string
param applicationInsightsConnectionString string
param besApiKeySecretUri string
param keyVaultUri string
param besJobsUrl string
param deployTargets string
param retrainSchedule string
@description('Event Grid topic endpoint for notifications; empty = none.')
param notifyTopicEndpoint string = ''
@description('Webhook for notifications; empty = none. Its secret: Key Vault secret NOTIFY-WEBHOOK-SECRET.')
param notifyWebhookUrl string = ''
@description('More app settings, e.g. {"PROD_CLASSIC_KEY": "@Microsoft.KeyVault(VaultName=...;SecretName=PROD-CLASSIC-KEY)"}')
param extraAppSettings object = {}

var settings = union({
  // Host storage by identity: no connection string anywhere.
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // azure-identity's DefaultAzureCredential (ARM web services) uses the same identity.
  AZURE_CLIENT_ID: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // Flex Consumption runs blob triggers from Event Grid only (see scripts/post-up.sh).
  TRAINING_BLOB_SOURCE: 'EventGrid'
  TRAINING_CONTAINER: 'training-data'
  MODELS_CONTAINER: 'models'
  RUNS_TABLE: 'retrainingruns'
  COMMANDS_QUEUE: 'retraining-commands'
  POLL_SCHEDULE: '0 */1 * * * *'
  BES_JOBS_URL: besJobsUrl
  BES_API_KEY: '@Microsoft.KeyVault(SecretUri=${besApiKeySecretUri})'
  DEPLOY_TARGETS: deployTargets
  KEY_VAULT_URI: keyVaultUri
}, empty(retrainSchedule) ? {} : { RETRAIN_SCHEDULE: retrainSchedule }, empty(notifyTopicEndpoint) ? {} : {
  NOTIFY_EVENTGRID_TOPIC: notifyTopicEndpoint
}, empty(notifyWebhookUrl) ? {} : {
  NOTIFY_WEBHOOK_URL: notifyWebhookUrl
  NOTIFY_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/NOTIFY-WEBHOOK-SECRET)'
  // Like every host the app sends to, the webhook's must be allowed by name.
  EXTRA_ALLOWED_HOSTS: split(notifyWebhookUrl, '/')[2]
}, extraAppSettings)

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${name}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: [for setting in items(settings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: 2048
        maximumInstanceCount: 40
      }
      runtime: {
        name: 'python'
        version: '3.12'
      }
    }
  }
}

output name string = site.name
