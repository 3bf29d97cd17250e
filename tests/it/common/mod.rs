//! Shared test fixtures: the scripted fake provider, the in-process gateway, the binary.

#![allow(dead_code)]

pub mod fake_openai;
pub mod gateway;
pub mod mcp_servers;
pub mod postgres;
pub mod process;
pub mod raw_upstream;
pub mod sse_client;
pub mod traffic;

pub use fake_openai::{FakeOpenAi, Reply};
pub use gateway::{Options, TestGateway, message};

/// Path of the compiled `xiaomaolv` binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_xiaomaolv")
}

/// The wall clock in Unix milliseconds, the unit of the timestamps the gateway returns.
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}
