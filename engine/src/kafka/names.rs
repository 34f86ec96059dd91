//! The names of sluice's topics and consumer groups on a cluster.

use super::KafkaSettings;

/// The names of the topics and groups sluice keeps on its cluster, all under the namespace.
impl KafkaSettings {
    /// The topic a flow's source writes its change records to.
    pub fn changes_topic(&self, flow: &str) -> String {
        format!("{}.{flow}.changes", self.namespace)
    }

    /// The topic a flow's bad records go to, with the reason in headers.
    pub fn dlq_topic(&self, flow: &str) -> String {
        format!("{}.{flow}.dlq", self.namespace)
    }

    /// The compacted topic holding each flow's last durable source position.
    pub fn positions_topic(&self) -> String {
        format!("{}.positions", self.namespace)
    }

    /// The compacted topic holding each flow's latest run record.
    pub fn runs_topic(&self) -> String {
        format!("{}.runs", self.namespace)
    }

    /// The compacted topic holding each flow's state (active, paused, deactivated).
    pub fn flow_states_topic(&self) -> String {
        format!("{}.flow-states", self.namespace)
    }

    /// The consumer group of a flow's sink workers.
    pub fn sink_group(&self, flow: &str) -> String {
        format!("{}.{flow}.sink", self.namespace)
    }

    /// The consumer group that replays a flow's DLQ: its committed offsets mark the dead
    /// letters already sent through the flow again.
    pub fn replay_group(&self, flow: &str) -> String {
        format!("{}.{flow}.replay", self.namespace)
    }

    /// The one-partition topic every flow's source claim group subscribes to: whichever member
    /// of a flow's group holds its partition runs that flow's source (see `runtime::claim`).
    /// Nothing is ever written to it.
    pub fn claims_topic(&self) -> String {
        format!("{}.claims", self.namespace)
    }

    /// The consumer group through which a flow's processes elect the one that runs its source.
    pub fn source_group(&self, flow: &str) -> String {
        format!("{}.{flow}.source", self.namespace)
    }

    /// The transactional id of a flow's source producer: a new owner registering it fences the
    /// previous owner's producer, so a paused and resumed old owner can write nothing more.
    pub fn source_transactional_id(&self, flow: &str) -> String {
        format!("{}.{flow}.source", self.namespace)
    }

    /// Whether `topic` is one of the compacted internal topics.
    pub(super) fn compacted(&self, topic: &str) -> bool {
        topic == self.positions_topic() || topic == self.runs_topic() || topic == self.flow_states_topic()
    }
}
