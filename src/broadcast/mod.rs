//! Broadcast: the one seam every published message goes through, whatever its source (a
//! client push, the HTTP API, later the database).
//!
//! [`Broadcaster::publish`] fans a message out to this node's subscribers through the hub and
//! hands it to a [`PeerFanout`] for the other nodes. Until the cluster exists the peer side is
//! [`NoPeers`]; the cluster step supplies an implementation backed by the QUIC bus, and messages
//! arriving from peers enter through [`Broadcaster::deliver_from_peer`] (local fan-out only).
//! Channels never talk to the hub or to peers directly to publish.

use std::sync::Arc;

use crate::hub::{ChannelSlot, FanoutMessage, Hub, RoomKey};
use crate::types::ConnId;

/// Forwards published messages to the other nodes of the cluster.
pub trait PeerFanout: Send + Sync + 'static {
    /// Sends `message` for `room` to every peer node that has subscribers for it.
    fn forward(&self, room: &RoomKey, message: &FanoutMessage);
}

/// The single-node peer side: there are no peers.
#[derive(Debug, Default)]
pub struct NoPeers;

impl PeerFanout for NoPeers {
    fn forward(&self, _room: &RoomKey, _message: &FanoutMessage) {}
}

/// Who published a message, so that a `self: false` channel does not receive its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The publishing connection.
    pub conn: ConnId,
    /// The publishing channel.
    pub slot: ChannelSlot,
}

/// Publishes broadcasts locally and to peers.
pub struct Broadcaster {
    hub: Arc<Hub>,
    peers: Arc<dyn PeerFanout>,
}

impl Broadcaster {
    /// Creates a broadcaster over this node's hub and a peer fan-out.
    pub fn new(hub: Arc<Hub>, peers: Arc<dyn PeerFanout>) -> Broadcaster {
        Broadcaster { hub, peers }
    }

    /// Publishes `message` to `room` on every node; `exclude` is the sender's own channel when it
    /// asked not to receive its own messages. Returns the number of local deliveries.
    pub fn publish(
        &self,
        room: &RoomKey,
        message: &FanoutMessage,
        exclude: Option<Origin>,
    ) -> usize {
        self.peers.forward(room, message);
        self.hub
            .publish(room, message, exclude.map(|o| (o.conn, o.slot)))
    }

    /// Delivers a message that a peer published to this node's subscribers only.
    pub fn deliver_from_peer(&self, room: &RoomKey, message: &FanoutMessage) -> usize {
        self.hub.publish(room, message, None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::hub::{Outbound, Subscriber, outbox};
    use crate::phoenix::Vsn;
    use crate::types::TenantId;

    #[derive(Default)]
    struct RecordingPeers(Mutex<Vec<RoomKey>>);

    impl PeerFanout for RecordingPeers {
        fn forward(&self, room: &RoomKey, _message: &FanoutMessage) {
            self.0.lock().unwrap().push(room.clone());
        }
    }

    #[test]
    fn publish_fans_out_locally_and_forwards_to_peers_once() {
        let hub = Hub::new();
        let peers = Arc::new(RecordingPeers::default());
        let b = Broadcaster::new(hub.clone(), peers.clone());
        let room = RoomKey {
            tenant: TenantId::from("t"),
            private: false,
            sub_topic: "r".into(),
        };
        let (o1, mut rx1, _) = outbox(4);
        let (o2, mut rx2, _) = outbox(4);
        let c1 = ConnId::next();
        hub.subscribe(
            room.clone(),
            Subscriber {
                conn: c1,
                slot: 1,
                vsn: Vsn::V2,
                outbox: o1,
                reads: crate::hub::Reads::ALL,
                replayed: None,
            },
        );
        hub.subscribe(
            room.clone(),
            Subscriber {
                conn: ConnId::next(),
                slot: 1,
                vsn: Vsn::V2,
                outbox: o2,
                reads: crate::hub::Reads::ALL,
                replayed: None,
            },
        );
        let msg = FanoutMessage::Json {
            kind: crate::hub::FanoutKind::Broadcast,
            event: "broadcast".into(),
            payload: "{}".into(),
        };
        assert_eq!(
            b.publish(&room, &msg, Some(Origin { conn: c1, slot: 1 })),
            1
        );
        assert!(rx1.try_recv().is_err());
        assert!(matches!(rx2.try_recv(), Ok(Outbound::Fanout { .. })));
        assert_eq!(peers.0.lock().unwrap().len(), 1);
        assert_eq!(b.deliver_from_peer(&room, &msg), 2);
        assert_eq!(
            peers.0.lock().unwrap().len(),
            1,
            "peer deliveries are not forwarded again"
        );
    }
}
