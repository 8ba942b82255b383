//! Session management (the README's "Session management"), end to end on a real `redis-server`
//! and on `memory://`: the admin endpoints with and without the token, inspecting and revoking
//! one session, the index of sessions by user kept through log-in, update, regenerate, destroy
//! and expiry, "log this user out everywhere" with several browsers, a revocation racing a
//! request in flight, and the `session-proxy sessions` command line.
//!
//! No timed assertions: waits are hang guards.

mod common;

use common::app::{send, Answer, AppEnv};
use common::faults::{guarded, panics, session_cookie_pair, session_id};
use common::*;
use http::{Method, Request, StatusCode};
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-0123456789";
const MAX_AGE: u64 = 3600;

type Env = AppEnv;

/// A proxy whose `server.admin_token` is `token`, sessions indexed by `/user/id` when `index`.
async fn start(redis: bool, token: Option<&str>, index: bool) -> Env {
    let token = token.map(|t| format!("admin_token = \"{t}\"")).unwrap_or_default();
    let index = if index { "index = \"/user/id\"" } else { "" };
    AppEnv::start(redis, &token, &format!("max_age = {MAX_AGE}\n{index}")).await
}

/// A log-in: a new session holding `value`; its cookie.
async fn login(env: &Env, value: &Value) -> String {
    env.create(&value.to_string()).await
}

/// The session the app is sent for `cookie` (`{}`: none).
async fn seen(env: &Env, cookie: &str) -> Value {
    serde_json::from_str(&env.session(cookie).await).unwrap()
}

async fn authorized(env: &Env, method: Method, path: &str) -> Answer {
    env.admin(method, path, Some(&format!("Bearer {TOKEN}"))).await
}

/// The ids listed for `value` (percent-encoded in the path), sorted, with their TTLs checked.
async fn indexed(env: &Env, value: &str) -> Vec<String> {
    let answer = authorized(env, Method::GET, &format!("/index/{value}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let listed = answer.json();
    let decoded = percent_encoding::percent_decode_str(value).decode_utf8().unwrap();
    assert_eq!(listed["value"], json!(decoded));
    let mut ids: Vec<String> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let ttl = s["ttl"].as_u64().unwrap();
            assert!(ttl > 0 && ttl <= MAX_AGE, "ttl {ttl}");
            s["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids
}

fn id(cookie: &str) -> String {
    session_id(cookie).unwrap()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Without `admin_token` the paths are 404; with it, a missing token, a wrong one and another
/// scheme are 401 (counted), and ids the proxy would never accept are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_need_the_token() {
    let off = start(false, None, true).await;
    let answer = off.admin(Method::GET, "/sessions/abc", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(off.admin(Method::DELETE, "/index/7", None).await.status, StatusCode::NOT_FOUND);

    let env = start(false, Some(TOKEN), true).await;
    for authorization in [
        None,
        Some("Bearer wrong-token"),
        Some(&format!("Bearer {TOKEN}x")[..]),
        Some(&format!("Basic {TOKEN}")[..]),
        Some(TOKEN),
    ] {
        for (method, path) in [(Method::GET, "/sessions/abc"), (Method::DELETE, "/index/7")] {
            let answer = env.admin(method, path, authorization).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
            assert_eq!(answer.headers["www-authenticate"], "Bearer");
            assert!(!answer.body.contains(TOKEN), "{}", answer.body);
        }
    }
    assert_eq!(env.metric("session_proxy_admin_unauthorized_total").await, 10.0);
    assert_eq!(authorized(&env, Method::GET, "/sessions/abc").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        env.admin(Method::GET, "/sessions/abc", Some(&format!("bearer {TOKEN}"))).await.status,
        StatusCode::NOT_FOUND
    );
    let long = "a".repeat(257);
    for bad in ["", "a%20b", "a%00b", "%FF", long.as_str(), "index%20%2Fuser%2Fid%207"] {
        let answer = authorized(&env, Method::GET, &format!("/sessions/{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            authorized(&env, Method::DELETE, &format!("/sessions/{bad}")).await.status,
            StatusCode::BAD_REQUEST
        );
    }
    assert_eq!(authorized(&env, Method::POST, "/sessions/abc").await.status, StatusCode::METHOD_NOT_ALLOWED);
    // The token authorizes only these endpoints; the others are as they were.
    assert_eq!(env.admin(Method::GET, "/healthz", None).await.status, StatusCode::OK);
    assert_eq!(panics(), 0);
}

/// `GET /sessions/{id}` shows a session; `DELETE` destroys it (idempotent), after which its
/// cookie is a new visitor.
async fn show_and_revoke(redis: bool) {
    let env = start(redis, Some(TOKEN), false).await;
    let cookie = login(&env, &json!({"user": {"id": 7, "name": "Zoë"}})).await;
    let answer = authorized(&env, Method::GET, &format!("/sessions/{}", id(&cookie))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/json");
    let shown = answer.json();
    assert_eq!(shown["id"], json!(id(&cookie)));
    assert_eq!(shown["data"], json!({"user": {"id": 7, "name": "Zoë"}}));
    let ttl = shown["ttl"].as_u64().unwrap();
    assert!(ttl > MAX_AGE - 300 && ttl <= MAX_AGE, "ttl {ttl}");

    for _ in 0..2 {
        let answer = authorized(&env, Method::DELETE, &format!("/sessions/{}", id(&cookie))).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
    }
    assert_eq!(
        authorized(&env, Method::GET, &format!("/sessions/{}", id(&cookie))).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(seen(&env, &cookie).await, json!({}));
    if let Some(redis) = env.redis() {
        assert_eq!(redis.cli(&["EXISTS", &format!("_session:{}", id(&cookie))]), "0");
    }
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_and_revoke_redis() {
    show_and_revoke(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_and_revoke_memory() {
    show_and_revoke(false).await;
}

/// The index follows each session: log-in adds it, an update of the indexed value moves it,
/// a regenerate replaces the old id by the new, a destroy and an operator's revoke take it
/// out; on Redis, a session that expired is dropped from its set when the set is read, and
/// the set's TTL covers `max_age`.
async fn the_index_follows_the_sessions(redis: bool) {
    let env = start(redis, Some(TOKEN), true).await;
    let a = login(&env, &json!({"user": {"id": 7}})).await;
    let b = login(&env, &json!({"user": {"id": 7}, "cart": []})).await;
    let c = login(&env, &json!({"user": {"id": "7"}})).await;
    let d = login(&env, &json!({"user": {"id": 8}})).await;
    let anonymous = login(&env, &json!({"cart": [1]})).await;
    assert_eq!(indexed(&env, "7").await, sorted(vec![id(&a), id(&b), id(&c)]));
    assert_eq!(indexed(&env, "8").await, vec![id(&d)]);

    // An update that does not touch the value keeps the session where it is.
    assert_eq!(env.call(Some(&b), &[("x-want-patch", r#"{"cart":[1]}"#)]).await.status, StatusCode::OK);
    // One that changes it moves it.
    assert_eq!(env.call(Some(&c), &[("x-want-patch", r#"{"user":{"id":8}}"#)]).await.status, StatusCode::OK);
    assert_eq!(indexed(&env, "7").await, sorted(vec![id(&a), id(&b)]));
    assert_eq!(indexed(&env, "8").await, sorted(vec![id(&c), id(&d)]));
    // One that removes it takes it out.
    assert_eq!(env.call(Some(&d), &[("x-want-update", r#"{"user":{}}"#)]).await.status, StatusCode::OK);
    assert_eq!(indexed(&env, "8").await, vec![id(&c)]);
    // A regenerate: the new id in, the old one out.
    let answer = env.call(Some(&a), &[("x-want-regenerate", "1")]).await;
    let a2 = session_cookie_pair(&answer.headers).expect("a new cookie");
    assert_eq!(indexed(&env, "7").await, sorted(vec![id(&a2), id(&b)]));
    // A destroy, and an operator's revoke.
    assert_eq!(env.call(Some(&b), &[("x-want-update", "null")]).await.status, StatusCode::OK);
    assert_eq!(
        authorized(&env, Method::DELETE, &format!("/sessions/{}", id(&c))).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(indexed(&env, "7").await, vec![id(&a2)]);
    assert_eq!(indexed(&env, "8").await, Vec::<String>::new());
    assert_eq!(seen(&env, &anonymous).await, json!({"cart": [1]}));

    if let Some(redis) = env.redis() {
        let set = "_session:index /user/id 7";
        let ttl: u64 = redis.cli(&["TTL", set]).parse().unwrap();
        assert!(ttl >= MAX_AGE, "the set's TTL {ttl} covers max_age");
        // Expired behind the proxy's back: listed no more, and dropped from the set.
        redis.cli(&["DEL", &format!("_session:{}", id(&a2))]);
        assert_eq!(indexed(&env, "7").await, Vec::<String>::new());
        assert_eq!(redis.cli(&["SMEMBERS", set]), "");
        // No index key can be read as a session: its "id" has spaces.
        let keys = redis.cli(&["KEYS", "_session:index*"]);
        assert!(keys.lines().all(|k| k.contains(' ')), "{keys}");
    }
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_the_sessions_redis() {
    the_index_follows_the_sessions(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_the_sessions_memory() {
    the_index_follows_the_sessions(false).await;
}

/// "Log this user out everywhere": three browsers of user 7 and one of user 8; after
/// `DELETE /index/7` each of the three is a new visitor and user 8 is still logged in.
async fn a_user_is_logged_out_everywhere(redis: bool) {
    let env = start(redis, Some(TOKEN), true).await;
    let jars: Vec<String> = {
        let mut jars = Vec::new();
        for device in ["laptop", "phone", "tablet"] {
            jars.push(login(&env, &json!({"user": {"id": 7}, "device": device})).await);
        }
        jars
    };
    let other = login(&env, &json!({"user": {"id": 8}})).await;
    let answer = authorized(&env, Method::DELETE, "/index/7").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json(), json!({"value": "7", "revoked": 3}));
    for jar in &jars {
        assert_eq!(seen(&env, jar).await, json!({}), "a new visitor");
    }
    assert_eq!(seen(&env, &other).await, json!({"user": {"id": 8}}));
    assert_eq!(indexed(&env, "7").await, Vec::<String>::new());
    assert_eq!(
        authorized(&env, Method::DELETE, "/index/7").await.json(),
        json!({"value": "7", "revoked": 0})
    );
    // Values are percent-decoded: an e-mail-like value with a slash.
    let odd = login(&env, &json!({"user": {"id": "a/b c@x"}})).await;
    assert_eq!(indexed(&env, "a%2Fb%20c%40x").await, vec![id(&odd)]);
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_logged_out_everywhere_redis() {
    a_user_is_logged_out_everywhere(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_logged_out_everywhere_memory() {
    a_user_is_logged_out_everywhere(false).await;
}

/// An operator revokes a session while a request of it is in the app: that request's update
/// gets 409 and the session stays revoked.
async fn a_revocation_racing_a_request_stays(redis: bool) {
    let env = start(redis, Some(TOKEN), true).await;
    let cookie = login(&env, &json!({"user": {"id": 7}})).await;
    let held = {
        let (url, cookie) = (env.proxy.url("/app"), cookie.clone());
        tokio::spawn(async move {
            let req = Request::get(url)
                .header("cookie", cookie)
                .header("x-hold", "1")
                .header("x-want-update", r#"{"user":{"id":7},"cart":[1]}"#)
                .body(empty())
                .unwrap();
            send(req).await
        })
    };
    guarded("the held request's read", env.gate.loaded.notified()).await;
    assert_eq!(authorized(&env, Method::DELETE, "/index/7").await.json()["revoked"], json!(1));
    env.gate.release.notify_one();
    let held = held.await.unwrap();
    assert_eq!(held.status, StatusCode::CONFLICT);
    assert!(held.headers.get("set-cookie").is_none());
    assert_eq!(seen(&env, &cookie).await, json!({}));
    assert_eq!(indexed(&env, "7").await, Vec::<String>::new());
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_racing_a_request_stays_redis() {
    a_revocation_racing_a_request_stays(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_racing_a_request_stays_memory() {
    a_revocation_racing_a_request_stays(false).await;
}

/// With an index, writes that do not change the indexed value cost no extra command: 100
/// updates make 100 conditional writes and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_index_values_cost_no_command() {
    let env = start(true, Some(TOKEN), true).await;
    let cookie = login(&env, &json!({"user": {"id": 7}, "n": 0})).await;
    // One write first, so that the server has the script (its first use loads it with EVAL).
    let warm = json!({"user": {"id": 7}, "n": -1}).to_string();
    assert_eq!(env.call(Some(&cookie), &[("x-want-update", &warm)]).await.status, StatusCode::OK);
    let redis = env.redis().unwrap();
    assert_eq!(redis.cli(&["CONFIG", "RESETSTAT"]), "OK");
    for n in 1..=100 {
        let update = json!({"user": {"id": 7}, "n": n}).to_string();
        assert_eq!(env.call(Some(&cookie), &[("x-want-update", &update)]).await.status, StatusCode::OK);
    }
    let calls = |command: &str| redis.command_calls(command);
    let stats = redis.cli(&["INFO", "commandstats"]);
    // The reads, and in each conditional write (a script: Redis counts its commands too) one
    // GET to compare and one SET.
    assert_eq!(calls("get"), 200, "{stats}");
    assert_eq!(calls("evalsha"), 100, "one conditional write each: {stats}");
    assert_eq!(calls("set"), 100, "{stats}");
    for other in ["eval", "sadd", "srem", "smembers", "expire", "ttl", "del"] {
        assert_eq!(calls(other), 0, "{other}: {stats}");
    }
    assert_eq!(panics(), 0);
}

/// `session-proxy sessions show|revoke|revoke-index` on the store of `--config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_shows_and_revokes() {
    let env = start(true, Some(TOKEN), true).await;
    let a = login(&env, &json!({"user": {"id": 7}})).await;
    let b = login(&env, &json!({"user": {"id": 7}})).await;
    let c = login(&env, &json!({"user": {"id": 9}})).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let write = |url: &str, index: bool| {
        let index = if index { "index = \"/user/id\"\n" } else { "" };
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{url}\"\n[session]\nsecrets = [\"test-secret\"]\n\
                 max_age = {MAX_AGE}\n{index}[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n"
            ),
        )
        .unwrap();
    };
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    write(&env.redis().unwrap().url(), true);

    let (code, out, err) = run(&["sessions", "show", &id(&c)]);
    assert_eq!(code, Some(0), "{err}");
    let shown: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(shown["data"], json!({"user": {"id": 9}}));
    let (code, _, err) = run(&["sessions", "show", "not-a-session"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no session"), "{err}");

    let (code, out, _) = run(&["sessions", "revoke-index", "7"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("revoked 2 session"), "{out}");
    let (code, out, _) = run(&["sessions", "revoke", &id(&c)]);
    assert_eq!(code, Some(0));
    assert!(out.contains("revoked session"), "{out}");
    for cookie in [&a, &b, &c] {
        assert_eq!(seen(&env, cookie).await, json!({}));
    }

    write(&env.redis().unwrap().url(), false);
    let (code, _, err) = run(&["sessions", "revoke-index", "7"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("session.index"), "{err}");
    write("memory://", true);
    let (code, _, err) = run(&["sessions", "show", &id(&a)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("memory://"), "{err}");
    assert_eq!(panics(), 0);
}
