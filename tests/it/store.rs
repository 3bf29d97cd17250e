//! The history store on both backends, SQLite and PostgreSQL, with the same test bodies: atomic
//! turns, ordering, limits, unknown usage, concurrency, and turns saved at the same moment.
//! Each PostgreSQL test gets its own database in the test cluster (`common::postgres`).

use std::num::NonZeroU32;
use std::sync::Arc;

use xiaomaolv::agent::{ToolCallOrigin, ToolCallRecord, ToolCallStatus};
use xiaomaolv::config::StoreConfig;
use xiaomaolv::provider::wire::{Role, Usage};
use xiaomaolv::store::{
    self, HistoryStore, MessagePage, NewMessage, NewTurn, PageRequest, SqliteStore, StoredMessage,
};

use crate::common::postgres::{self as pg, fresh_database};

/// Where a test's store lives.
pub(crate) enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres { url: String },
}

impl Backend {
    pub(crate) fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().unwrap())
    }

    pub(crate) async fn postgres() -> Self {
        Self::Postgres {
            url: fresh_database().await,
        }
    }

    pub(crate) fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join("history.db").display()),
            Self::Postgres { url } => url.clone(),
        }
    }

    /// Opens the store through `store::open`, which picks the backend from the URL.
    async fn open(&self) -> Arc<dyn HistoryStore> {
        store::open(&config(self.url())).await.unwrap()
    }

    /// Makes every insert of a message with content `boom` fail, through a second connection.
    pub(crate) async fn reject_boom(&self) {
        match self {
            Self::Sqlite(_) => {
                let mut raw = <sqlx::SqliteConnection as sqlx::Connection>::connect(&self.url())
                    .await
                    .unwrap();
                sqlx::query(
                    "CREATE TRIGGER reject_boom BEFORE INSERT ON messages \
                     WHEN NEW.content = 'boom' \
                     BEGIN SELECT RAISE(ABORT, 'rejected by test trigger'); END",
                )
                .execute(&mut raw)
                .await
                .unwrap();
            }
            Self::Postgres { url } => pg::reject_boom(url).await,
        }
    }
}

fn config(url: String) -> StoreConfig {
    StoreConfig {
        url,
        max_connections: 4,
        busy_timeout_ms: 5000,
    }
}

/// Runs each named test body once per backend, as `sqlite::NAME` and `postgres::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::sqlite()).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::postgres().await).await;
                }
            )+
        }
    };
}

/// Returns a request for the newest `limit` messages with an id below `before`.
pub(crate) fn page_request(limit: u32, before: Option<i64>) -> PageRequest {
    PageRequest {
        limit: NonZeroU32::new(limit).expect("a page limit of at least 1"),
        before,
    }
}

/// Reads a whole session as one page of up to 1000 messages, or `None` for an unknown session.
pub(crate) async fn all_messages<S>(store: &S, session_id: &str) -> Option<Vec<StoredMessage>>
where
    S: HistoryStore + ?Sized,
{
    let page = store
        .message_page(session_id, page_request(1000, None))
        .await
        .unwrap()?;
    assert_eq!(page.next_before, None, "session {session_id} fits one page");
    Some(page.messages)
}

/// Reads a session page by page from the newest, and returns the pages in the order read.
async fn read_all_pages(
    store: &dyn HistoryStore,
    session_id: &str,
    limit: u32,
) -> Vec<MessagePage> {
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .message_page(session_id, page_request(limit, before))
            .await
            .unwrap()
            .expect("the session exists");
        before = page.next_before;
        pages.push(page);
        if before.is_none() {
            return pages;
        }
        assert!(pages.len() <= 1000, "paging does not end");
    }
}

on_both_backends!(
    saved_turn_reads_back_in_order,
    recent_messages_returns_newest_oldest_first,
    unknown_session_is_none_and_empty,
    failed_turn_writes_nothing,
    concurrent_writers_lose_nothing,
    data_survives_reopen,
    concurrent_sessions_keep_turn_order,
    failing_turn_loses_no_other_turn,
    tool_calls_and_code_mode_record_read_back,
    reads_never_see_half_a_turn,
    pages_return_every_message_once,
    full_last_page_has_no_cursor,
    records_stay_with_turn_across_pages,
    new_turns_do_not_shift_older_pages,
    unknown_session_has_no_page,
);

pub(crate) fn turn(
    session: &str,
    turn_id: &str,
    user: &str,
    reply: &str,
    usage: Option<Usage>,
) -> NewTurn {
    let message = |role, content: &str, usage| NewMessage {
        role,
        content: content.to_owned(),
        created_at_ms: 1_700_000_000_000,
        provider: None,
        model: None,
        finish_reason: None,
        usage,
    };
    NewTurn {
        session_id: session.to_owned(),
        user_id: "u1".to_owned(),
        turn_id: turn_id.to_owned(),
        messages: vec![
            message(Role::User, user, None),
            message(Role::Assistant, reply, usage),
        ],
        tool_calls: Vec::new(),
        code_mode: None,
    }
}

async fn saved_turn_reads_back_in_order(backend: Backend) {
    let store = backend.open().await;
    let usage = Usage {
        prompt_tokens: 10,
        completion_tokens: 5,
        total_tokens: 15,
    };
    store
        .save_turn(&turn("s1", "t1", "hello", "hi!", Some(usage)))
        .await
        .unwrap();
    store
        .save_turn(&turn("s1", "t2", "again", "sure", None))
        .await
        .unwrap();

    let messages = all_messages(&*store, "s1").await.unwrap();
    let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["hello", "hi!", "again", "sure"]);
    assert_eq!(messages[0].role, Role::User);
    assert_eq!(messages[1].role, Role::Assistant);
    assert_eq!(messages[1].usage, Some(usage));
    assert_eq!(messages[3].usage, None, "unknown usage stays unknown");
    assert_eq!(messages[2].turn_id, "t2");
}

async fn recent_messages_returns_newest_oldest_first(backend: Backend) {
    let store = backend.open().await;
    for i in 0..5 {
        store
            .save_turn(&turn(
                "s1",
                &format!("t{i}"),
                &format!("q{i}"),
                &format!("a{i}"),
                None,
            ))
            .await
            .unwrap();
    }
    let recent = store.recent_messages("s1", 3).await.unwrap();
    let contents: Vec<&str> = recent.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["a3", "q4", "a4"]);
}

async fn unknown_session_is_none_and_empty(backend: Backend) {
    let store = backend.open().await;
    assert!(all_messages(&*store, "missing").await.is_none());
    assert!(
        store
            .recent_messages("missing", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn failed_turn_writes_nothing(backend: Backend) {
    let store = backend.open().await;
    // The trigger makes the assistant message fail after the session row and the user message
    // were inserted in the same transaction. All of it must roll back.
    backend.reject_boom().await;

    let result = store
        .save_turn(&turn("s1", "t1", "hello", "boom", None))
        .await;
    assert!(result.is_err());
    assert!(all_messages(&*store, "s1").await.is_none());
    assert!(store.recent_messages("s1", 10).await.unwrap().is_empty());
}

async fn concurrent_writers_lose_nothing(backend: Backend) {
    let store = backend.open().await;
    let writers = (0..50).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let session = format!("s{}", i % 5);
            store
                .save_turn(&turn(&session, &format!("t{i}"), "q", "a", None))
                .await
        })
    });
    for writer in futures_util::future::join_all(writers).await {
        writer.unwrap().unwrap();
    }
    for session in 0..5 {
        let messages = all_messages(&*store, &format!("s{session}")).await.unwrap();
        assert_eq!(messages.len(), 20);
        for pair in messages.chunks(2) {
            assert_eq!(pair[0].turn_id, pair[1].turn_id, "turns never interleave");
        }
    }
}

/// Reopening also applies the migrations again, which must find nothing left to do.
async fn data_survives_reopen(backend: Backend) {
    {
        let store = backend.open().await;
        store
            .save_turn(&turn("s1", "t1", "q", "a", None))
            .await
            .unwrap();
    }
    let store = backend.open().await;
    assert_eq!(all_messages(&*store, "s1").await.unwrap().len(), 2);
}

#[tokio::test]
async fn in_memory_store_reads_its_writes() {
    let config = StoreConfig {
        url: "sqlite::memory:".to_owned(),
        max_connections: 4,
        busy_timeout_ms: 5000,
    };
    let store = SqliteStore::open(&config).await.unwrap();
    store
        .save_turn(&turn("s1", "t1", "q", "a", None))
        .await
        .unwrap();
    assert_eq!(all_messages(&store, "s1").await.unwrap().len(), 2);
    assert_eq!(store.recent_messages("s1", 10).await.unwrap().len(), 2);
}

async fn concurrent_sessions_keep_turn_order(backend: Backend) {
    let store = backend.open().await;
    // Each session saves its turns one after another, as the session lock makes the agent do,
    // while all sessions run at once, so the writer gets batches that mix sessions.
    let sessions = (0..40).map(|s| {
        let store = store.clone();
        tokio::spawn(async move {
            for t in 0..10 {
                let session = format!("s{s}");
                let (question, answer) = (format!("q{t}"), format!("a{t}"));
                let turn = turn(&session, &format!("s{s}-t{t}"), &question, &answer, None);
                store.save_turn(&turn).await.unwrap();
            }
        })
    });
    for session in futures_util::future::join_all(sessions).await {
        session.unwrap();
    }
    for s in 0..40 {
        let messages = all_messages(&*store, &format!("s{s}")).await.unwrap();
        let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        let expected: Vec<String> = (0..10)
            .flat_map(|t| [format!("q{t}"), format!("a{t}")])
            .collect();
        assert_eq!(contents, expected, "session s{s}");
    }
}

async fn failing_turn_loses_no_other_turn(backend: Backend) {
    let store = backend.open().await;
    backend.reject_boom().await;
    // Every fifth turn fails. All are sent at once, so failing and good turns share batches.
    let saves = (0..60).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let reply = if i % 5 == 0 { "boom" } else { "fine" };
            let turn = turn(&format!("s{i}"), &format!("t{i}"), "q", reply, None);
            store.save_turn(&turn).await
        })
    });
    let outcomes = futures_util::future::join_all(saves).await;

    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome.unwrap();
        let stored = all_messages(&*store, &format!("s{i}")).await;
        if i % 5 == 0 {
            let error = outcome.unwrap_err().to_string();
            assert!(
                error.contains("rejected by test trigger"),
                "turn {i}: {error}"
            );
            assert!(stored.is_none(), "turn {i} left its session row behind");
        } else {
            assert!(outcome.is_ok(), "turn {i}: {outcome:?}");
            assert_eq!(stored.unwrap().len(), 2, "turn {i}");
        }
    }
}

async fn tool_calls_and_code_mode_record_read_back(backend: Backend) {
    let store = backend.open().await;
    let call = |name: &str, status, origin| ToolCallRecord {
        name: name.to_owned(),
        server: Some("files".to_owned()),
        tool: Some(name.to_owned()),
        arguments: serde_json::json!({"path": "/tmp/a"}),
        status,
        error: (status == ToolCallStatus::Failed).then(|| "timed out".to_owned()),
        duration_ms: 12,
        truncated: origin == ToolCallOrigin::CodeMode,
        origin,
    };
    let mut first = turn("s1", "t1", "read it", "done", None);
    first.tool_calls = vec![
        call("read", ToolCallStatus::Ok, ToolCallOrigin::CodeMode),
        call("stat", ToolCallStatus::Failed, ToolCallOrigin::ToolLoop),
    ];
    first.code_mode = Some(serde_json::json!({"used": true, "calls": 1}));
    store.save_turn(&first).await.unwrap();
    store
        .save_turn(&turn("s1", "t2", "thanks", "welcome", None))
        .await
        .unwrap();

    let messages = all_messages(&*store, "s1").await.unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[1].tool_calls, first.tool_calls);
    assert_eq!(messages[1].code_mode, first.code_mode);
    assert!(messages[0].tool_calls.is_empty(), "user message");
    assert!(messages[3].tool_calls.is_empty(), "a later turn");
    assert_eq!(messages[3].code_mode, None);
}

async fn reads_never_see_half_a_turn(backend: Backend) {
    let store = backend.open().await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for t in 0..100 {
                let turn = turn("s1", &format!("t{t}"), "q", "a", None);
                store.save_turn(&turn).await.unwrap();
            }
        })
    };
    // Reads on several tasks at once borrow several pooled connections while turns commit.
    let readers = (0..4).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                let recent = store.recent_messages("s1", 1000).await.unwrap();
                assert_eq!(
                    recent.len() % 2,
                    0,
                    "a turn is visible with all its messages"
                );
                tokio::task::yield_now().await;
            }
        })
    });
    for reader in futures_util::future::join_all(readers).await {
        reader.unwrap();
    }
    writer.await.unwrap();
    assert_eq!(store.recent_messages("s1", 1000).await.unwrap().len(), 200);
}

/// Saves `turns` turns `t0`, `t1`, … on session `s1`, with messages `q0`, `a0`, `q1`, `a1`, ….
async fn save_turns(store: &dyn HistoryStore, turns: usize) {
    for t in 0..turns {
        let turn = turn(
            "s1",
            &format!("t{t}"),
            &format!("q{t}"),
            &format!("a{t}"),
            None,
        );
        store.save_turn(&turn).await.unwrap();
    }
}

fn contents(messages: &[StoredMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.content.as_str()).collect()
}

async fn pages_return_every_message_once(backend: Backend) {
    let store = backend.open().await;
    save_turns(&*store, 7).await;

    let pages = read_all_pages(&*store, "s1", 4).await;
    let sizes: Vec<usize> = pages.iter().map(|page| page.messages.len()).collect();
    assert_eq!(sizes, [4, 4, 4, 2]);
    for page in &pages[..3] {
        assert_eq!(
            page.next_before,
            Some(page.messages[0].id),
            "the cursor is the oldest id of the page"
        );
    }
    assert_eq!(pages[3].next_before, None, "the oldest page");

    let read: Vec<StoredMessage> = pages
        .into_iter()
        .rev()
        .flat_map(|page| page.messages)
        .collect();
    let expected: Vec<String> = (0..7)
        .flat_map(|t| [format!("q{t}"), format!("a{t}")])
        .collect();
    assert_eq!(contents(&read), expected);
    assert!(
        read.windows(2).all(|pair| pair[0].id < pair[1].id),
        "ids ascend across pages"
    );

    let oldest = read[0].id;
    let below_oldest = store
        .message_page("s1", page_request(4, Some(oldest)))
        .await
        .unwrap()
        .unwrap();
    assert!(below_oldest.messages.is_empty());
    assert_eq!(below_oldest.next_before, None);
}

async fn full_last_page_has_no_cursor(backend: Backend) {
    let store = backend.open().await;
    save_turns(&*store, 4).await;

    let first = store
        .message_page("s1", page_request(4, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&first.messages), ["q2", "a2", "q3", "a3"]);
    let second = store
        .message_page("s1", page_request(4, first.next_before))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&second.messages), ["q0", "a0", "q1", "a1"]);
    assert_eq!(second.next_before, None, "no empty page follows");

    let whole = store
        .message_page("s1", page_request(8, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(whole.messages.len(), 8);
    assert_eq!(whole.next_before, None);
}

async fn records_stay_with_turn_across_pages(backend: Backend) {
    let store = backend.open().await;
    let call = |turn: usize, seq: usize| ToolCallRecord {
        name: format!("files__read_{turn}_{seq}"),
        server: Some("files".to_owned()),
        tool: Some("read".to_owned()),
        arguments: serde_json::json!({"turn": turn, "seq": seq}),
        status: ToolCallStatus::Ok,
        error: None,
        duration_ms: 3,
        truncated: false,
        origin: ToolCallOrigin::ToolLoop,
    };
    let mut saved = Vec::new();
    for t in 0..5 {
        let mut new_turn = turn(
            "s1",
            &format!("t{t}"),
            &format!("q{t}"),
            &format!("a{t}"),
            None,
        );
        new_turn.tool_calls = vec![call(t, 0), call(t, 1)];
        new_turn.code_mode = Some(serde_json::json!({"turn": t}));
        store.save_turn(&new_turn).await.unwrap();
        saved.push(new_turn);
    }

    // Pages of 3 split turns t3 and t0: the user message lands on the older page and the
    // assistant message on the newer one.
    let pages = read_all_pages(&*store, "s1", 3).await;
    assert_eq!(pages.len(), 4);
    let mut assistants_seen = 0;
    for page in &pages {
        for message in &page.messages {
            let t: usize = message.turn_id[1..].parse().unwrap();
            if message.role == Role::Assistant {
                assistants_seen += 1;
                assert_eq!(
                    message.tool_calls, saved[t].tool_calls,
                    "tool calls of {}",
                    message.turn_id
                );
                assert_eq!(
                    message.code_mode, saved[t].code_mode,
                    "code-mode record of {}",
                    message.turn_id
                );
            } else {
                assert!(message.tool_calls.is_empty(), "user message of t{t}");
                assert_eq!(message.code_mode, None, "user message of t{t}");
            }
        }
    }
    assert_eq!(assistants_seen, 5);
    let newest = &pages[0].messages;
    assert_eq!(contents(newest), ["a3", "q4", "a4"]);
    assert_eq!(newest[0].tool_calls, saved[3].tool_calls, "split turn t3");
}

async fn new_turns_do_not_shift_older_pages(backend: Backend) {
    let store = backend.open().await;
    save_turns(&*store, 5).await;
    let first = store
        .message_page("s1", page_request(4, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&first.messages), ["q3", "a3", "q4", "a4"]);

    let later = turn("s1", "t5", "q5", "a5", None);
    store.save_turn(&later).await.unwrap();
    let second = store
        .message_page("s1", page_request(4, first.next_before))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&second.messages), ["q1", "a1", "q2", "a2"]);
    assert!(second.next_before.is_some());
}

async fn unknown_session_has_no_page(backend: Backend) {
    let store = backend.open().await;
    save_turns(&*store, 1).await;
    let page = store
        .message_page("missing", page_request(10, Some(100)))
        .await
        .unwrap();
    assert_eq!(page, None);
}
