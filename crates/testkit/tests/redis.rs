#![allow(clippy::unwrap_used)]
//! Redis: PING answers PONG; maxmemory and no-persistence settings are in force.

use pgtandem_testkit::Redis;

async fn connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

#[tokio::test]
async fn ping_answers_pong() -> anyhow::Result<()> {
    let redis = Redis::start()?;
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
    let mut con = connection(&redis.url()).await?;
    let pong: String = redis::cmd("PING").query_async(&mut con).await?;
    assert_eq!(pong, "PONG");
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut con)
        .await?;
    assert_eq!(save, ["save", ""]);
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut con)
        .await?;
    assert_eq!(aof, ["appendonly", "no"]);
    Ok(())
}

#[tokio::test]
async fn maxmemory_is_applied_and_restart_empties() -> anyhow::Result<()> {
    let mut redis = Redis::builder().maxmemory(8 * 1024 * 1024).start()?;
    let mut con = connection(&redis.url()).await?;
    let max: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query_async(&mut con)
        .await?;
    assert_eq!(max, ["maxmemory", "8388608"]);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut con)
        .await?;
    drop(con);

    redis.restart()?;
    let mut con = connection(&redis.url()).await?;
    let value: Option<String> = redis::cmd("GET").arg("k").query_async(&mut con).await?;
    assert_eq!(value, None, "no persistence: a restart starts empty");
    Ok(())
}
