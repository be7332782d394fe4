//! Protocol Buffers of pgtandem's gRPC services (package `steep.repl.v1`) and the generated tonic code.
//!
//! The `.proto` files under `proto/` are part of the steep-repl compatibility contract: message
//! names and field numbers are frozen, new fields take numbers >= 100.

/// `steep.repl.v1`: the node daemon's `Coordinator` service (and, later, `InitService`).
pub mod steep_repl_v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("steep.repl.v1");
}

pub use steep_repl_v1::coordinator_client::CoordinatorClient;
pub use steep_repl_v1::coordinator_server::{Coordinator, CoordinatorServer};

#[cfg(test)]
mod tests {
    use super::steep_repl_v1::{
        HealthCheckResponse, NodeInfo, health_check_response::ServingStatus,
    };
    use prost::Message;

    /// Field numbers are frozen: a hand-encoded NodeInfo must decode into the right fields.
    #[test]
    fn node_info_field_numbers_are_frozen() {
        // field 1 (string) "a", field 4 (varint) 5433, field 6 (bool) true, field 8 (string) "ok"
        let wire: &[u8] = &[
            0x0a, 0x01, b'a', 0x20, 0xb9, 0x2a, 0x30, 0x01, 0x42, 0x02, b'o', b'k',
        ];
        let info = NodeInfo::decode(wire).expect("decode");
        assert_eq!(info.node_id, "a");
        assert_eq!(info.port, 5433);
        assert!(info.is_coordinator);
        assert_eq!(info.status, "ok");
    }

    #[test]
    fn serving_status_numbers_are_frozen() {
        assert_eq!(ServingStatus::Serving as i32, 1);
        assert_eq!(ServingStatus::NotServing as i32, 2);
        let resp = HealthCheckResponse {
            status: ServingStatus::NotServing as i32,
            ..Default::default()
        };
        assert_eq!(resp.encode_to_vec(), vec![0x08, 0x02]);
    }
}
