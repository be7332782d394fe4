#![allow(clippy::unwrap_used)]
//! etcd: put/get through etcd-client, data survives restart and a crash.

use etcd_client::Client;
use pgtandem_testkit::Etcd;

async fn get(client: &mut Client, key: &str) -> anyhow::Result<Option<String>> {
    let resp = client.get(key, None).await?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_owned()))
}

#[tokio::test]
async fn put_get_and_survive_restart_and_crash() -> anyhow::Result<()> {
    let mut etcd = Etcd::start()?;
    assert_ne!(etcd.client_port(), etcd.peer_port());
    assert_eq!(
        etcd.endpoint(),
        format!("http://127.0.0.1:{}", etcd.client_port())
    );

    let mut client = Client::connect([etcd.endpoint()], None).await?;
    client.put("/pgtandem/test", "hello", None).await?;
    assert_eq!(
        get(&mut client, "/pgtandem/test").await?.as_deref(),
        Some("hello")
    );
    assert_eq!(get(&mut client, "/pgtandem/missing").await?, None);
    drop(client);

    etcd.restart()?;
    let mut client = Client::connect([etcd.endpoint()], None).await?;
    assert_eq!(
        get(&mut client, "/pgtandem/test").await?.as_deref(),
        Some("hello")
    );
    client.put("/pgtandem/second", "2", None).await?;
    drop(client);

    let pid = etcd.pid().unwrap();
    etcd.kill9()?;
    assert!(!pgtandem_testkit::process_alive(pid));
    etcd.restart()?;
    let mut client = Client::connect([etcd.endpoint()], None).await?;
    assert_eq!(
        get(&mut client, "/pgtandem/second").await?.as_deref(),
        Some("2")
    );
    Ok(())
}
