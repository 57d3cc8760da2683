// Key Vault (RBAC mode) for the Azure ML keys. App settings hold only Key Vault references.
param name string
param location string
param tags object
@secure()
param besApiKey string
@secure()
param extraSecrets string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    enablePurgeProtection: true
  }
}

resource besKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'BES-API-KEY'
  properties: { value: besApiKey }
}

resource extra 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [for secret in items(json(extraSecrets)): {
  parent: vault
  name: secret.key
  properties: { value: secret.value }
}]

output name string = vault.name
output uri string = vault.properties.vaultUri
output besApiKeySecretUri string = besKey.properties.secretUri
