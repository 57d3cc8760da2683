#!/bin/sh
# After deploy: subscribe the blob trigger to Event Grid (Flex Consumption supports no other blob
# trigger source). The webhook needs the blobs_extension system key, which exists only once the
# function app runs, hence a post-deploy hook rather than Bicep.
set -eu
: "${AZURE_RESOURCE_GROUP:?}" "${AZURE_FUNCTION_APP_NAME:?}" "${AZURE_STORAGE_ACCOUNT_NAME:?}"
container="${TRAINING_CONTAINER:-training-data}"
key=$(az functionapp keys list -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
      --query "systemKeys.blobs_extension" -o tsv)
storage_id=$(az storage account show -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_STORAGE_ACCOUNT_NAME" --query id -o tsv)
topic="evgt-$AZURE_STORAGE_ACCOUNT_NAME"
az eventgrid system-topic show -g "$AZURE_RESOURCE_GROUP" -n "$topic" >/dev/null 2>&1 ||
  az eventgrid system-topic create -g "$AZURE_RESOURCE_GROUP" -n "$topic" --source "$storage_id" \
     --topic-type Microsoft.Storage.StorageAccounts --location "$(az group show -n "$AZURE_RESOURCE_GROUP" --query location -o tsv)"
az eventgrid system-topic event-subscription create -g "$AZURE_RESOURCE_GROUP" --system-topic-name "$topic" \
   -n retrain-on-upload --endpoint-type webhook \
   --endpoint "https://$AZURE_FUNCTION_APP_NAME.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.retrain_on_upload&code=$key" \
   --included-event-types Microsoft.Storage.BlobCreated \
   --subject-begins-with "/blobServices/default/containers/$container/"
echo "Event Grid subscription retrain-on-upload -> $AZURE_FUNCTION_APP_NAME ($container)"

# With a v2 workspace: its RunCompleted/RunStatusChanged events nudge the poll (Bicep made the topic).
if [ -n "${ML_EVENTS_TOPIC:-}" ]; then
  app_id=$(az functionapp show -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" --query id -o tsv)
  az eventgrid system-topic event-subscription create -g "${ML_WORKSPACE_RESOURCE_GROUP:?}" \
     --system-topic-name "$ML_EVENTS_TOPIC" -n nudge-on-ml-event --endpoint-type azurefunction \
     --endpoint "$app_id/functions/nudge_on_ml_event" --event-delivery-schema cloudeventschemav1_0 \
     --included-event-types Microsoft.MachineLearningServices.RunCompleted \
                            Microsoft.MachineLearningServices.RunStatusChanged
  echo "Event Grid subscription nudge-on-ml-event -> $AZURE_FUNCTION_APP_NAME ($ML_EVENTS_TOPIC)"
fi
