//! Integration tests: one binary, one module per area. `common` starts the gateway and the fakes.

mod common;

mod bridge;
mod code_mode;
mod config;
mod connections;
mod declarations;
mod diag_auth;
mod error_mapping;
mod gateway_binary;
mod http_api;
mod mcp;
mod mcp_admin;
mod mcp_cli;
mod metrics_endpoint;
mod prometheus;
mod provider;
mod real_model;
mod sandbox;
mod session_lock;
mod shutdown;
mod sse;
mod store;
mod store_file;
mod store_migration;
mod store_postgres;
mod store_postgres_tls;
mod subprocess;
mod tool_loop;
mod turn_limit;
mod upstream_faults;
