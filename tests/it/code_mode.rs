//! Code mode end to end through `POST /v1/messages`: the scripted fake model writes programs, real
//! MCP servers (the Python fault server and server-everything) run the tools they call.

use serde_json::{Value, json};

use crate::common::fake_openai::tool_calls;
use crate::common::mcp_servers::{everything_script, fault_server_script, python};
use crate::common::{FakeOpenAi, Options, Reply, TestGateway, message};

/// Both servers, with `capabilities = []` so their tools need nothing that code mode must grant.
fn mcp_tables() -> String {
    format!(
        r#"
[mcp.servers.faults]
command = "{python}"
args = ["{fault}"]
timeout_ms = 20000
capabilities = []

[mcp.servers.everything]
command = "node"
args = ["{everything}", "stdio"]
timeout_ms = 20000
capabilities = []
"#,
        python = python(),
        fault = fault_server_script(),
        everything = everything_script(),
    )
}

async fn gateway(fake: &FakeOpenAi, code_mode: &str) -> TestGateway {
    let agent: &'static str =
        Box::leak(format!("[agent.code_mode]\nenabled = true\n{code_mode}").into_boxed_str());
    let options = Options {
        agent,
        extra: mcp_tables(),
        ..Default::default()
    };
    TestGateway::start_with(&fake.base_url(), options).await
}

/// Builds a completion that calls `run_program` with `code`.
fn program(code: &str) -> Reply {
    let arguments = json!({ "code": code }).to_string();
    Reply::Json(tool_calls(&[("run_program", &arguments)], "tool_calls"))
}

/// Returns the report the gateway sent back as the result of the last `run_program` call.
fn last_report(request: &Value) -> Value {
    let content = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .expect("a tool message")["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let json_part = content.lines().next().unwrap();
    serde_json::from_str(json_part).unwrap()
}

#[tokio::test]
async fn a_program_chains_two_calls_and_the_model_answers_from_its_result() {
    let fake = FakeOpenAi::start().await;
    fake.push(program(
        "const sum = await tools.everything.get_sum({a: 2, b: 40});\n\
         const echoed = await tools.faults.echo({text: 'sum=' + JSON.stringify(sum)});\n\
         return {sum, echoed};",
    ));
    fake.push(Reply::text("The sum is 42."));
    let gateway = gateway(&fake, "").await;

    let (status, body) = gateway.send(message("s1", "What is 2 + 40?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "The sum is 42.");
    assert_eq!(body["activity"]["mode"], "code_mode");
    assert_eq!(body["activity"]["provider_requests"], 2);
    let attempt = &body["activity"]["code_mode"]["attempt"];
    assert_eq!(body["activity"]["code_mode"]["outcome"], "used");
    assert_eq!(attempt["used"], true);
    assert_eq!(attempt["executed_calls"], 2);
    assert_eq!(attempt["runs"], 1);
    let calls = body["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert!(
        calls
            .iter()
            .all(|c| c["origin"] == "code_mode" && c["status"] == "ok")
    );

    let requests = fake.requests();
    let offered: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["run_program"]);
    let description = requests[0].body["tools"][0]["function"]["description"]
        .as_str()
        .unwrap();
    assert!(description.contains("get_sum(args: {"), "{description}");
    let report = last_report(&requests[1].body);
    assert_eq!(report["ok"], true);
    let echoed = report["value"]["echoed"].as_str().unwrap();
    assert!(echoed.starts_with("sum="), "{report}");
    assert!(echoed.contains("42"), "{report}");
    assert_eq!(
        requests[1].body["tools"],
        Value::Null,
        "the final request offers no tools"
    );

    let history = gateway.history("s1").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["code_mode"]["used"], true);
    assert_eq!(history[1]["tool_calls"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn calls_in_promise_all_run_in_parallel_up_to_max_parallel() {
    let fake = FakeOpenAi::start().await;
    fake.push(program(
        "const started = Date.now();\n\
         const results = await Promise.all([0.3, 0.3].map(s => tools.faults.sleep({seconds: s})));\n\
         return {results, overlapped: Date.now() - started < 550};",
    ));
    fake.push(Reply::text("done"));
    let gateway = gateway(&fake, "max_parallel = 2\nmax_call_timeout_ms = 2000").await;

    let (status, body) = gateway.send(message("s1", "sleep twice")).await;
    assert_eq!(status, 200, "{body}");
    let report = last_report(&fake.requests()[1].body);
    assert_eq!(
        report["value"]["results"],
        json!(["slept 0.3", "slept 0.3"])
    );
    assert_eq!(report["value"]["overlapped"], true, "{report}");
}

#[tokio::test]
async fn a_reply_without_a_program_is_a_direct_answer() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("Paris."));
    let gateway = gateway(&fake, "").await;

    let (status, body) = gateway.send(message("s1", "Capital of France?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "Paris.");
    assert_eq!(body["activity"]["mode"], "direct");
    assert_eq!(body["activity"]["code_mode"]["outcome"], "direct_answer");
    assert_eq!(body["activity"]["provider_requests"], 1);
    let counters = gateway.state.agent.code_mode().snapshot().counters;
    assert_eq!(
        (counters.attempts_total, counters.direct_answers_total),
        (0, 1)
    );
}

#[tokio::test]
async fn a_broken_program_is_repaired_on_the_second_try() {
    let fake = FakeOpenAi::start().await;
    fake.push(program("return tools.everything.get_sum({a: 1, b: 2}"));
    fake.push(program(
        "return await tools.everything.get_sum({a: 1, b: 2});",
    ));
    fake.push(Reply::text("3"));
    let gateway = gateway(&fake, "").await;

    let (status, body) = gateway.send(message("s1", "1+2?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "3");
    let attempt = &body["activity"]["code_mode"]["attempt"];
    assert_eq!(attempt["used"], true);
    assert_eq!(attempt["runs"], 2);
    let requests = fake.requests();
    let repair = last_report(&requests[1].body);
    assert_eq!(repair["ok"], false);
    assert!(
        repair["error"].as_str().unwrap().contains("does not parse"),
        "{repair}"
    );
    assert_eq!(
        requests[1].body["tools"][0]["function"]["name"], "run_program",
        "the repair request offers the program tool again"
    );
}

#[tokio::test]
async fn a_program_that_fails_twice_falls_back_to_the_tool_loop_with_completed_calls() {
    let fake = FakeOpenAi::start().await;
    fake.push(program(
        "await tools.faults.echo({text: 'done once'}); throw new Error('first failure');",
    ));
    fake.push(program("throw new Error('second failure');"));
    fake.push(Reply::text("answered by the tool loop"));
    let gateway = gateway(&fake, "").await;

    let (status, body) = gateway.send(message("s1", "try hard")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "answered by the tool loop");
    let code_mode = &body["activity"]["code_mode"];
    assert_eq!(code_mode["outcome"], "fallback");
    assert_eq!(code_mode["attempt"]["reason"], "runtime_error");
    assert_eq!(code_mode["attempt"]["runs"], 2);
    assert_eq!(
        code_mode["attempt"]["run_failures"],
        json!(["runtime_error", "runtime_error"])
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    let loop_request = &requests[2].body;
    let names: Vec<&str> = loop_request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"faults__echo"), "{names:?}");
    assert!(!names.contains(&"run_program"));
    let messages = loop_request["messages"].as_array().unwrap();
    let handed_over = messages
        .iter()
        .find(|m| m["role"] == "assistant" && !m["tool_calls"].is_null())
        .expect("the completed call is handed over");
    assert_eq!(
        handed_over["tool_calls"][0]["function"]["name"],
        "faults__echo"
    );
    assert!(
        messages
            .iter()
            .any(|m| m["role"] == "tool" && m["content"] == "done once")
    );
    let counters = gateway.state.agent.code_mode().snapshot().counters;
    assert_eq!(counters.attempts_total, 1);
    assert_eq!(counters.fallback_total, 1);
    assert_eq!(counters.used_total, 0);
}

#[tokio::test]
async fn shadow_mode_runs_the_program_but_the_tool_loop_serves() {
    let fake = FakeOpenAi::start().await;
    fake.push(program(
        "const a = await tools.faults.echo({text: 'safe'});\n\
         let refused = '';\n\
         try { await tools.faults.add({a: 1, b: 2}); } catch (e) { refused = e.message; }\n\
         return {a, refused};",
    ));
    fake.push(Reply::text("served by the loop"));
    let gateway = gateway(&fake, "shadow_mode = true").await;

    let (status, body) = gateway.send(message("s1", "hi")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "served by the loop");
    let attempt = &body["activity"]["code_mode"]["attempt"];
    assert_eq!(attempt["role"], "shadow");
    assert_eq!(attempt["reason"], "shadow");
    assert_eq!(
        attempt["executed_calls"], 1,
        "the non-idempotent tool did not run"
    );
    let calls = body["tool_calls"].as_array().unwrap();
    let add = calls.iter().find(|c| c["tool"] == "add").unwrap();
    assert_eq!(add["status"], "rejected");
    assert!(add["error"].as_str().unwrap().contains("shadow"), "{add}");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let names: Vec<&str> = requests[1].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"faults__add"),
        "the classic loop gets every tool"
    );
}

/// Without `capabilities` overrides, the annotations decide: server-everything marks most tools
/// `openWorldHint: false`, the fault server sends no hints, which means open world (network).
#[tokio::test]
async fn tools_needing_ungranted_capabilities_are_not_declared() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("no program needed"));
    let options = Options {
        agent: "[agent.code_mode]\nenabled = true",
        extra: mcp_tables().replace("capabilities = []", ""),
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;

    let (status, body) = gateway.send(message("s1", "hi")).await;
    assert_eq!(status, 200, "{body}");
    let description = fake.requests()[0].body["tools"][0]["function"]["description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(description.contains("get_sum("), "{description}");
    assert!(
        !description.contains("gzip_file_as_resource"),
        "open world tool declared"
    );
    assert!(
        !description.contains("faults"),
        "unannotated tools need network"
    );
}

#[tokio::test]
async fn code_mode_is_not_offered_when_no_tool_is_allowed() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("classic"));
    let options = Options {
        agent: "[agent.code_mode]\nenabled = true",
        extra: format!(
            "[mcp.servers.faults]\ncommand = \"{}\"\nargs = [\"{}\"]\n",
            python(),
            fault_server_script()
        ),
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;

    let (status, body) = gateway.send(message("s1", "hi")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["activity"]["code_mode"].is_null(), "{body}");
    let names: Vec<String> = fake.requests()[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.contains(&"run_program".to_owned()), "{names:?}");
    assert!(names.contains(&"faults__echo".to_owned()));
}

#[tokio::test]
async fn a_fenced_program_in_the_reply_text_runs_when_delivery_is_fenced() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text(
        "I will compute it.\n```js\nreturn await tools.everything.get_sum({a: 20, b: 22});\n```\nDone.",
    ));
    fake.push(Reply::text("42"));
    let gateway = gateway(&fake, "program_delivery = \"fenced\"").await;

    let (status, body) = gateway.send(message("s1", "20+22?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "42");
    assert_eq!(
        body["activity"]["code_mode"]["attempt"]["planner"],
        "fenced"
    );
    let requests = fake.requests();
    assert_eq!(requests[0].body["tools"], Value::Null);
    let system = requests[0].body["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("```js"), "{system}");
    assert!(system.contains("get_sum"), "{system}");
    let last = requests[1].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "user");
    assert!(last["content"].as_str().unwrap().contains("42"), "{last}");
}

/// Slow calls open the circuit; requests then skip code mode, every second one probes, and a
/// probe with fast tools closes it.
#[tokio::test]
async fn slow_tools_open_the_circuit_and_a_fast_probe_closes_it() {
    let fake = FakeOpenAi::start().await;
    let gateway = gateway(
        &fake,
        "max_call_timeout_ms = 300\nmax_runtime_ms = 2000\nmax_repair_attempts = 0\n\
         timeout_auto_shadow_streak = 2\ntimeout_auto_shadow_probe_every = 2",
    )
    .await;
    let slow = "return await tools.faults.sleep({seconds: 1.5});";
    let code_mode = || gateway.state.agent.code_mode().snapshot();

    for turn in 0..2 {
        fake.push(program(slow));
        fake.push(Reply::text("loop answer"));
        let (status, body) = gateway.send(message(&format!("slow{turn}"), "go")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["activity"]["code_mode"]["attempt"]["timed_out_calls"],
            1
        );
    }
    let snapshot = code_mode();
    assert!(snapshot.circuit.open, "{:?}", snapshot.circuit);
    assert_eq!(snapshot.circuit.opens_total, 1);
    assert_eq!(snapshot.counters.timed_out_calls_total, 2);

    fake.push(Reply::text("skipped code mode"));
    let (_, body) = gateway.send(message("open1", "go")).await;
    assert_eq!(body["activity"]["code_mode"]["outcome"], "skipped");
    assert_ne!(
        fake.requests().last().unwrap().body["tools"][0]["function"]["name"],
        "run_program",
        "a skipped request offers the classic tools"
    );

    fake.push(program("return await tools.faults.sleep({seconds: 1.5});"));
    fake.push(Reply::text("probe served by the loop"));
    let (_, body) = gateway.send(message("probe1", "go")).await;
    assert_eq!(body["activity"]["code_mode"]["attempt"]["role"], "probe");
    assert_eq!(body["reply"], "probe served by the loop");
    assert!(code_mode().circuit.open, "a slow probe keeps it open");

    fake.push(Reply::text("skipped again"));
    gateway.send(message("open2", "go")).await;
    fake.push(program("return await tools.faults.echo({text: 'fast'});"));
    fake.push(Reply::text("probe served by the loop"));
    let (_, body) = gateway.send(message("probe2", "go")).await;
    assert_eq!(body["activity"]["code_mode"]["attempt"]["reason"], "probe");
    let snapshot = code_mode();
    assert!(!snapshot.circuit.open, "{:?}", snapshot.circuit);
    assert_eq!(snapshot.circuit.closes_total, 1);
    assert_eq!(snapshot.circuit.probes_total, 2);
    assert_eq!(snapshot.circuit.skips_total, 2);

    fake.push(program("return 1;"));
    fake.push(Reply::text("code mode again"));
    let (_, body) = gateway.send(message("after", "go")).await;
    assert_eq!(body["activity"]["code_mode"]["outcome"], "used");
    let counters = code_mode().counters;
    assert_eq!(
        counters.attempts_total,
        counters.used_total + counters.fallback_total
    );
}

/// Two turns whose programs spin forever occupy the engine threads, not the async workers:
/// `/health` returns 200 while both are still running.
#[tokio::test]
async fn health_answers_while_two_programs_spin() {
    let fake = FakeOpenAi::start().await;
    for _ in 0..2 {
        fake.push(program("while (true) {}"));
    }
    for _ in 0..2 {
        fake.push(Reply::text("after the fallback"));
    }
    let gateway = gateway(&fake, "max_runtime_ms = 3000\nmax_repair_attempts = 0").await;
    let url = gateway.url("/v1/messages");
    let turns: Vec<_> = ["spin1", "spin2"]
        .into_iter()
        .map(|session| {
            let request = gateway.client.post(&url).json(&message(session, "spin"));
            tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await })
        })
        .collect();
    while fake.request_count() < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let health = gateway
        .client
        .get(gateway.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        turns.iter().all(|turn| !turn.is_finished()),
        "health answered while both programs were still spinning"
    );
    for turn in turns {
        let body = turn.await.unwrap().unwrap();
        assert_eq!(body["reply"], "after the fallback");
        assert_eq!(
            body["activity"]["code_mode"]["attempt"]["reason"],
            "timeout"
        );
    }
}

/// A model that calls a tool natively instead of `run_program` is handed to the classic loop,
/// which offers that tool; no program ran, so it is not an attempt.
#[tokio::test]
async fn a_native_tool_call_instead_of_a_program_goes_to_the_tool_loop() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(tool_calls(
        &[("everything__get-sum", r#"{"a": 1, "b": 1}"#)],
        "tool_calls",
    )));
    fake.push(Reply::Json(tool_calls(
        &[("everything__get-sum", r#"{"a": 1, "b": 1}"#)],
        "tool_calls",
    )));
    fake.push(Reply::text("2"));
    let gateway = gateway(&fake, "").await;

    let (status, body) = gateway.send(message("s1", "1+1?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "2");
    assert_eq!(body["activity"]["mode"], "tool_loop");
    assert_eq!(body["activity"]["code_mode"]["outcome"], "fallback");
    assert!(body["activity"]["code_mode"]["attempt"].is_null());
    assert_eq!(body["tool_calls"][0]["origin"], "tool_loop");
    let counters = gateway.state.agent.code_mode().snapshot().counters;
    assert_eq!(
        (counters.attempts_total, counters.direct_answers_total),
        (0, 0)
    );
}

/// The same chained program through `POST /v1/messages`, with the engine in a child process: the
/// child's tool calls come back over the pipe and run against the real servers here.
#[tokio::test]
async fn subprocess_mode_serves_a_program_end_to_end() {
    let fake = FakeOpenAi::start().await;
    fake.push(program(
        "const sum = await tools.everything.get_sum({a: 5, b: 6});\n\
         const [x, y] = await Promise.all([tools.faults.echo({text: 'x'}), tools.faults.echo({text: 'y'})]);\n\
         console.log('in the child');\n\
         return {sum, x, y};",
    ));
    fake.push(Reply::text("eleven"));
    let gateway = gateway(&fake, "execution_mode = \"subprocess\"").await;

    let (status, body) = gateway.send(message("s1", "5+6?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "eleven");
    assert_eq!(body["activity"]["code_mode"]["outcome"], "used");
    assert_eq!(
        body["activity"]["code_mode"]["attempt"]["executed_calls"],
        3
    );
    let report = last_report(&fake.requests()[1].body);
    assert_eq!(report["value"]["x"], "x");
    assert_eq!(report["value"]["y"], "y");
    assert!(
        report["value"]["sum"].to_string().contains("11"),
        "{report}"
    );
    assert_eq!(report["console"], "in the child\n");
}

#[tokio::test]
async fn subprocess_mode_falls_back_when_the_program_exhausts_memory() {
    let fake = FakeOpenAi::start().await;
    fake.push(program(
        "const a = []; while (true) { a.push('x'.repeat(4096)); }",
    ));
    fake.push(Reply::text("served by the loop"));
    let gateway = gateway(
        &fake,
        "execution_mode = \"subprocess\"\nmemory_limit_mb = 16\nmax_repair_attempts = 0",
    )
    .await;

    let (status, body) = gateway.send(message("s1", "bomb")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "served by the loop");
    assert_eq!(
        body["activity"]["code_mode"]["attempt"]["reason"],
        "out_of_memory"
    );
}

/// With tool delivery, a code block in a text reply is an example in a plain answer, not a
/// program: it is never run.
#[tokio::test]
async fn a_code_block_in_a_text_reply_is_not_run_with_tool_delivery() {
    let fake = FakeOpenAi::start().await;
    let answer = "Here is how you could do it, but I will not run it:\n```js\nawait tools.faults.crash({code: 7});\n```";
    fake.push(Reply::text(answer));
    let gateway = gateway(&fake, "").await;

    let (status, body) = gateway.send(message("s1", "show me")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], answer);
    assert_eq!(body["activity"]["code_mode"]["outcome"], "direct_answer");
    assert_eq!(body["tool_calls"], serde_json::json!([]));
    assert_eq!(fake.request_count(), 1);
}
