//! Generates the tonic client and server for `steep.repl.v1` from the frozen `.proto` files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/steep/repl/v1/repl.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
