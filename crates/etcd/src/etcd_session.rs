//! Opening the etcd client from the DSN and the startup probe (spec §3.1 step 4).

use std::time::Duration;

use etcd_client::{Channel, Client, ConnectOptions, GetOptions, KvClient, WatchClient};
use tonic::transport::Endpoint;

use crate::dsn::EtcdDsn;
use crate::error::{SyncError, SyncResult};
use crate::etcd_tls::{self, UnverifiedConnector};

/// gRPC decode limit: large Range pages and watch batches exceed tonic's 4 MiB default.
const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;

/// An etcd connection with raised message limits.
#[derive(Clone)]
pub struct EtcdSession {
    client: Client,
}

/// What the probe learned: the cluster identity and current revision.
#[derive(Debug, Clone, Copy)]
pub struct ProbeResult {
    pub cluster_id: u64,
    pub revision: i64,
    pub keys_in_prefix: i64,
}

impl EtcdSession {
    /// Connects (lazily on the transport level; the probe proves reachability).
    pub async fn connect(dsn: &EtcdDsn) -> SyncResult<Self> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(dsn.dial_timeout)
            .with_timeout(dsn.request_timeout)
            .with_keep_alive(Duration::from_secs(10), dsn.dial_timeout)
            .with_auto_token_refresh(true);
        if let Some(user) = &dsn.username {
            options = options.with_user(user.clone(), dsn.password().unwrap_or_default());
        }
        let client = match &dsn.tls {
            None => Client::connect(&dsn.endpoints, Some(options)).await?,
            Some(tls) => match etcd_tls::verified_options(tls)? {
                Some(verified) => {
                    Client::connect(&dsn.endpoints, Some(options.with_tls(verified))).await?
                }
                None => {
                    let connector =
                        UnverifiedConnector::new(&dsn.endpoints, tls, dsn.dial_timeout)?;
                    // tonic wants a URI; the connector picks the host itself.
                    let first = dsn
                        .endpoints
                        .first()
                        .map_or("localhost:2379", String::as_str);
                    let endpoint = Endpoint::from_shared(format!("http://{first}"))
                        .map_err(|e| SyncError::Etcd {
                            message: format!("etcd endpoint {first}: {e}"),
                            retryable: false,
                        })?
                        .connect_timeout(dsn.dial_timeout)
                        .timeout(dsn.request_timeout)
                        .http2_keep_alive_interval(Duration::from_secs(10))
                        .keep_alive_timeout(dsn.dial_timeout);
                    let channel = endpoint.connect_with_connector_lazy(connector);
                    Client::from_channel(Channel::Tonic(channel), Some(options)).await?
                }
            },
        };
        Ok(EtcdSession { client })
    }

    pub fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_DECODE_BYTES)
    }

    pub fn watch_client(&self) -> WatchClient {
        self.client
            .watch_client()
            .max_decoding_message_size(MAX_DECODE_BYTES)
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Keys-only count Range on the prefix: checks RBAC, yields revision and cluster id.
    pub async fn probe(&self, prefix: &str) -> SyncResult<ProbeResult> {
        let resp = self
            .kv()
            .get(prefix, Some(prefix_options(prefix).with_count_only()))
            .await?;
        let header = resp
            .header()
            .ok_or_else(|| SyncError::Fatal("etcd response without header".into()))?;
        Ok(ProbeResult {
            cluster_id: header.cluster_id(),
            revision: header.revision(),
            keys_in_prefix: resp.count(),
        })
    }
}

/// End of the key range for a prefix (etcd's `GetPrefixRangeEnd`).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Range options covering `prefix`; the prefix `/` covers every key from `/`
/// on, and the empty prefix would be all keys.
pub fn prefix_options(prefix: &str) -> GetOptions {
    GetOptions::new().with_range(prefix_range_end(prefix.as_bytes()))
}

/// Whether an etcd error says the requested revision was compacted.
pub fn is_compacted(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.message().contains("compacted"))
}

/// Whether an etcd error asks for smaller pages.
pub fn is_resource_exhausted(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::ResourceExhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_increments_last_byte() {
        assert_eq!(prefix_range_end(b"/t/"), b"/t0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff"), vec![0]);
    }
}
