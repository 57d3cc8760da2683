// Azure ML workspace events (optional, with a v2 workspace): the workspace's Event Grid system topic.
// The subscription to the app's nudge_on_ml_event function (RunCompleted, RunStatusChanged; CloudEvents)
// is made by scripts/post-up.sh: an Azure Function endpoint can be subscribed only once the function
// is deployed. The timer poll stays the source of truth; the events only make it faster.
param workspaceName string
param tags object

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-12-01' existing = {
  name: workspaceName
}

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: 'evgt-${workspaceName}'
  location: workspace.location
  tags: tags
  properties: {
    source: workspace.id
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

output name string = topic.name
