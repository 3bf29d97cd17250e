//! The guard of the diagnostics endpoints: disabled without a token, the bearer token check, and
//! the per-client rate limit that runs before it.

use std::sync::Arc;

use reqwest::{RequestBuilder, Response};
use serde_json::Value;

use crate::common::traffic::DIAG_TOKEN;
use crate::common::{FakeOpenAi, Options, TestGateway, message};

const PATHS: [&str; 2] = ["/v1/code-mode/diag", "/v1/code-mode/metrics"];

async fn gateway(http: &'static str) -> (FakeOpenAi, TestGateway) {
    let fake = FakeOpenAi::start().await;
    let options = Options {
        http,
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    (fake, gateway)
}

fn get(gateway: &TestGateway, path: &str) -> RequestBuilder {
    gateway.client.get(gateway.url(path))
}

async fn send(request: RequestBuilder) -> Response {
    request.send().await.unwrap()
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn endpoints_answer_404_without_a_diag_token() {
    let (_fake, gateway) = gateway("").await;
    for path in PATHS {
        let response = send(get(&gateway, path).bearer_auth("anything")).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "not_found", "{path}");
    }
}

#[tokio::test]
async fn api_token_does_not_reveal_disabled_endpoints() {
    let (_fake, gateway) = gateway("api_bearer_token = \"api-token\"").await;
    for path in PATHS {
        let response = send(get(&gateway, path)).await;
        assert_eq!(response.status(), 404, "{path}");
        let response = send(gateway.client.post(gateway.url(path))).await;
        assert_eq!(response.status(), 404, "POST {path}");
    }
}

#[tokio::test]
async fn missing_token_is_401_with_www_authenticate() {
    let (_fake, gateway) = gateway("diag_bearer_token = \"diag-test-token\"").await;
    for path in PATHS {
        let response = send(get(&gateway, path)).await;
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(header(&response, "www-authenticate"), Some("Bearer"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "unauthorized");
    }
}

#[tokio::test]
async fn wrong_token_is_401() {
    let (_fake, gateway) = gateway("diag_bearer_token = \"diag-test-token\"").await;
    let wrong = [
        "Bearer diag-test-tokeN",
        "Bearer diag-test-token-longer",
        "Bearer diag-test",
        "Basic diag-test-token",
        "diag-test-token",
        "Bearer",
    ];
    for value in wrong {
        for path in PATHS {
            let response = send(get(&gateway, path).header("authorization", value)).await;
            assert_eq!(response.status(), 401, "{value} on {path}");
            assert_eq!(header(&response, "www-authenticate"), Some("Bearer"));
        }
    }
}

#[tokio::test]
async fn lowercase_scheme_and_extra_spaces_are_accepted() {
    let (_fake, gateway) = gateway("diag_bearer_token = \"diag-test-token\"").await;
    let accepted = [
        "Bearer diag-test-token",
        "bearer diag-test-token",
        "BEARER diag-test-token",
        "Bearer    diag-test-token   ",
        "  bearer diag-test-token",
    ];
    for value in accepted {
        for path in PATHS {
            let response = send(get(&gateway, path).header("authorization", value)).await;
            assert_eq!(response.status(), 200, "{value:?} on {path}");
        }
    }
}

#[tokio::test]
async fn diag_and_api_tokens_are_separate() {
    let http = "api_bearer_token = \"api-token\"\ndiag_bearer_token = \"diag-test-token\"";
    let (_fake, gateway) = gateway(http).await;
    for path in PATHS {
        let response = send(get(&gateway, path).bearer_auth(DIAG_TOKEN)).await;
        assert_eq!(response.status(), 200, "{path}");
        let response = send(get(&gateway, path).bearer_auth("api-token")).await;
        assert_eq!(response.status(), 401, "API token on {path}");
    }
    let response = send(get(&gateway, "/v1/sessions/s1/messages").bearer_auth(DIAG_TOKEN)).await;
    assert_eq!(
        response.status(),
        401,
        "the diag token does not open the API"
    );
}

#[tokio::test]
async fn rate_limit_rejects_request_after_n() {
    let http = "diag_bearer_token = \"diag-test-token\"\ndiag_rate_limit_per_minute = 5";
    let (_fake, gateway) = gateway(http).await;
    for n in 0..5u64 {
        let path = PATHS[n as usize % 2];
        let response = send(get(&gateway, path).bearer_auth(DIAG_TOKEN)).await;
        assert_eq!(response.status(), 200, "request {n} on {path}");
        assert_eq!(header(&response, "ratelimit-limit"), Some("5"));
        let remaining = (4 - n).to_string();
        assert_eq!(header(&response, "ratelimit-remaining"), Some(&*remaining));
    }
    for path in PATHS {
        let response = send(get(&gateway, path).bearer_auth(DIAG_TOKEN)).await;
        assert_eq!(response.status(), 429, "{path}");
        let retry_after: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
        assert_eq!(header(&response, "ratelimit-limit"), Some("5"));
        assert_eq!(header(&response, "ratelimit-remaining"), Some("0"));
        let reset: u64 = header(&response, "ratelimit-reset")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(reset, retry_after);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "rate_limited");
    }
}

#[tokio::test]
async fn rate_limit_is_checked_before_the_token() {
    let http = "diag_bearer_token = \"diag-test-token\"\ndiag_rate_limit_per_minute = 3";
    let (_fake, gateway) = gateway(http).await;
    for n in 0..3 {
        let response = send(get(&gateway, PATHS[0]).bearer_auth("guess")).await;
        assert_eq!(response.status(), 401, "guess {n}");
    }
    let response = send(get(&gateway, PATHS[1]).bearer_auth("guess")).await;
    assert_eq!(response.status(), 429, "a wrong token is limited too");
    let response = send(get(&gateway, PATHS[1]).bearer_auth(DIAG_TOKEN)).await;
    assert_eq!(
        response.status(),
        429,
        "the right token waits like any other"
    );
    let rejected = gateway.url(PATHS[1]);
    let metrics = send(gateway.client.get(&rejected).bearer_auth(DIAG_TOKEN)).await;
    assert_eq!(metrics.status(), 429);
}

#[tokio::test]
async fn rate_limit_leaves_other_routes_alone() {
    let http = "diag_bearer_token = \"diag-test-token\"\ndiag_rate_limit_per_minute = 1";
    let (_fake, gateway) = gateway(http).await;
    let response = send(get(&gateway, PATHS[0]).bearer_auth(DIAG_TOKEN)).await;
    assert_eq!(response.status(), 200);
    let response = send(get(&gateway, PATHS[0]).bearer_auth(DIAG_TOKEN)).await;
    assert_eq!(response.status(), 429);
    for n in 0..5 {
        let health = send(get(&gateway, "/health")).await;
        assert_eq!(health.status(), 200, "health {n}");
        assert!(health.headers().get("ratelimit-limit").is_none());
        let (status, body) = gateway.send(message(&format!("s{n}"), "hi")).await;
        assert_eq!(status, 200, "message {n}: {body}");
    }
}

#[tokio::test]
async fn zero_rate_limit_means_unlimited() {
    let http = "diag_bearer_token = \"diag-test-token\"\ndiag_rate_limit_per_minute = 0";
    let (_fake, gateway) = gateway(http).await;
    for n in 0..30 {
        let response = send(get(&gateway, PATHS[n % 2]).bearer_auth(DIAG_TOKEN)).await;
        assert_eq!(response.status(), 200, "request {n}");
        assert!(response.headers().get("ratelimit-limit").is_none());
    }
}

#[tokio::test]
async fn concurrent_requests_from_many_tasks_pass_exactly_n() {
    let http = "diag_bearer_token = \"diag-test-token\"\ndiag_rate_limit_per_minute = 25";
    let (_fake, gateway) = gateway(http).await;
    let gateway = Arc::new(gateway);
    let tasks: Vec<_> = (0..60)
        .map(|n| {
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let path = PATHS[n % 2];
                send(get(&gateway, path).bearer_auth(DIAG_TOKEN))
                    .await
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(passed, 25, "{statuses:?}");
    assert_eq!(limited, 35, "{statuses:?}");
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_an_untrusted_peer() {
    let http = "diag_bearer_token = \"diag-test-token\"\ndiag_rate_limit_per_minute = 2";
    let (_fake, gateway) = gateway(http).await;
    let statuses =
        forwarded_statuses(&gateway, ["203.0.113.1", "203.0.113.2", "203.0.113.3"]).await;
    assert_eq!(
        statuses,
        [200, 200, 429],
        "one client whatever the header says"
    );
}

#[tokio::test]
async fn forwarded_for_trusted_from_a_proxy() {
    let http = "diag_bearer_token = \"diag-test-token\"\ndiag_rate_limit_per_minute = 2\n\
                trusted_proxies = [\"127.0.0.0/8\"]";
    let (_fake, gateway) = gateway(http).await;
    let distinct =
        forwarded_statuses(&gateway, ["203.0.113.1", "203.0.113.2", "203.0.113.3"]).await;
    assert_eq!(distinct, [200, 200, 200], "three clients behind the proxy");
    let same = forwarded_statuses(&gateway, ["198.51.100.9", "198.51.100.9", "198.51.100.9"]).await;
    assert_eq!(same, [200, 200, 429], "one client behind the proxy");
    let spoofed = "198.51.100.9, 203.0.113.1";
    let response = send(
        get(&gateway, PATHS[0])
            .bearer_auth(DIAG_TOKEN)
            .header("x-forwarded-for", spoofed),
    )
    .await;
    assert_eq!(
        response.status(),
        200,
        "only the rightmost untrusted entry counts"
    );
}

async fn forwarded_statuses(gateway: &TestGateway, clients: [&str; 3]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for client in clients {
        let request = get(gateway, PATHS[1])
            .bearer_auth(DIAG_TOKEN)
            .header("x-forwarded-for", client);
        statuses.push(send(request).await.status().as_u16());
    }
    statuses
}
