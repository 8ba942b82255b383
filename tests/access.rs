//! Access control at the edge and identity headers (the README's "Access control and identity
//! headers"), end to end on a real `redis-server` and on `memory://`: protected routes for
//! anonymous browsers (302 to log in, with the right `next`), API clients (401), logged-in
//! sessions (forwarded), the wrong role; identity headers for strings, non-ASCII, numbers,
//! booleans, nested objects and missing values; forged identity headers in every spelling
//! removed on protected, open and `session = false` routes; a store failure under `pass`; a
//! reload; the refusal metrics.
//!
//! No timed assertions: waits are hang guards.

mod common;

use common::app::{Answer, AppEnv};
use common::faults::panics;
use http::{Method, StatusCode};
use serde_json::json;

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const API: &str = "application/json";

const ROUTES: &str = r#"
[[route]]
prefix = "/admin"
upstream = "{app}"
require = "/user/roles"
require_value = "admin"

[[route]]
prefix = "/account"
upstream = "{app}"
require = "/user"

[[route]]
prefix = "/level"
upstream = "{app}"
require = "/user/level"
require_value = 3

[[route]]
prefix = "/static/"
upstream = "{app}"
session = false

[[route]]
prefix = "/"
upstream = "{app}"
"#;

const HEADERS: &str = r#"
login_url = "/login"

[session.headers]
"x-user-id" = "/user/id"
"x-user-name" = "/user/name"
"x-user-roles" = "/user/roles"
"x-user-prefs" = "/user/prefs"
"x-user-admin" = "/user/admin"
"x-user-email" = "/user/email"
"#;

async fn start(redis: bool, session: &str) -> AppEnv {
    AppEnv::start_with(redis, "", session, ROUTES).await
}

fn assert_sent_to_log_in(answer: &Answer, next: &str) {
    assert_eq!(answer.status, StatusCode::FOUND, "{}", answer.body);
    assert_eq!(answer.headers["location"], format!("/login?next={next}"));
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert!(answer.received("x-session").is_empty(), "the app was not called: {}", answer.body);
}

fn assert_refused(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert!(answer.headers.get("location").is_none());
    assert!(answer.received("x-session").is_empty(), "the app was not called: {}", answer.body);
}

/// Protected routes: anonymous browsers go to log in with their own path and query as `next`;
/// API clients, other methods and a browser without a login page get 401; a session that
/// meets the requirement reaches the app; the wrong role does not. Counted by route.
async fn protected_routes(redis: bool) {
    let env = start(redis, HEADERS).await;
    let answer = env.get("/account/orders?page=2&q=caf%C3%A9", None, &[("accept", BROWSER)]).await;
    assert_sent_to_log_in(&answer, "%2Faccount%2Forders%3Fpage%3D2%26q%3Dcaf%25C3%25A9");
    let answer = env.request(Method::HEAD, "/account", None, &[("accept", BROWSER)]).await;
    assert_eq!(answer.status, StatusCode::FOUND);
    // No Accept at all allows HTML (RFC 9110).
    assert_sent_to_log_in(&env.get("/account", None, &[]).await, "%2Faccount");
    // A forged Host never makes it into the redirect.
    let answer = env.get("/account", None, &[("accept", BROWSER), ("host", "evil.example")]).await;
    assert_sent_to_log_in(&answer, "%2Faccount");
    assert_refused(&env.get("/account", None, &[("accept", API)]).await);
    assert_refused(&env.request(Method::POST, "/account", None, &[("accept", BROWSER)]).await);
    assert_refused(&env.get("/account", None, &[("accept", "text/html;q=0, */*;q=0")]).await);

    let ada = env.create(&json!({"user": {"id": 7, "roles": ["dev"], "level": 3}}).to_string()).await;
    for path in ["/account", "/account/orders", "/level"] {
        let answer = env.get(path, Some(&ada), &[("accept", BROWSER)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.received("x-session").len(), 1, "{path}");
    }
    // The wrong role.
    assert_sent_to_log_in(&env.get("/admin", Some(&ada), &[("accept", BROWSER)]).await, "%2Fadmin");
    assert_refused(&env.get("/admin", Some(&ada), &[("accept", API)]).await);
    let root =
        env.create(&json!({"user": {"id": 1, "roles": ["dev", "admin"], "level": 2}}).to_string()).await;
    assert_eq!(env.get("/admin/panel", Some(&root), &[("accept", API)]).await.status, StatusCode::OK);
    assert_refused(&env.get("/level", Some(&root), &[("accept", API)]).await);
    // `null` and `false` are no value.
    let nobody = env.create(&json!({"user": null}).to_string()).await;
    assert_refused(&env.get("/account", Some(&nobody), &[("accept", API)]).await);
    // Open routes serve everyone.
    assert_eq!(env.get("/open", None, &[("accept", API)]).await.status, StatusCode::OK);
    assert_eq!(env.get("/static/app.css", None, &[]).await.status, StatusCode::OK);

    let refused = |route: &str, status: &str| {
        let series = format!(r#"session_proxy_require_refused_total{{route="{route}",status="{status}"}}"#);
        let env = &env;
        async move { env.metric(&series).await }
    };
    assert_eq!(refused("/account", "302").await, 4.0);
    assert_eq!(refused("/account", "401").await, 4.0);
    assert_eq!(refused("/admin", "302").await, 1.0);
    assert_eq!(refused("/admin", "401").await, 1.0);
    assert_eq!(refused("/level", "401").await, 1.0);
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_routes_redis() {
    protected_routes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_routes_memory() {
    protected_routes(false).await;
}

/// Without `login_url`, a browser is refused like any other client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_login_url_browsers_get_401() {
    let env = start(false, "").await;
    assert_refused(&env.get("/account", None, &[("accept", BROWSER)]).await);
    assert_eq!(panics(), 0);
}

/// Identity headers carry the session's values as the README says to encode them, on every session
/// route; absent for a missing or `null` value and for visitors without a session.
async fn identity_headers(redis: bool) {
    let env = start(redis, HEADERS).await;
    let session = json!({"user": {
        "id": 7,
        "name": "Zoë O'Neil 100%\u{1}",
        "roles": ["dev", "ops"],
        "prefs": {"lang": "fr", "é": [1, 2.5]},
        "admin": false,
        "email": null,
    }});
    let cookie = env.create(&session.to_string()).await;
    for path in ["/account", "/open"] {
        let answer = env.get(path, Some(&cookie), &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.received("x-user-id"), ["7"], "{path}");
        assert_eq!(answer.received("x-user-name"), ["Zo%C3%AB O'Neil 100%25%01"], "{path}");
        assert_eq!(answer.received("x-user-roles"), [r#"["dev","ops"]"#], "{path}");
        assert_eq!(answer.received("x-user-prefs"), [r#"{"lang":"fr","\u00e9":[1,2.5]}"#], "{path}");
        assert_eq!(answer.received("x-user-admin"), ["false"], "{path}");
        assert!(answer.received("x-user-email").is_empty(), "null is absent: {path}");
    }
    // A visitor without a session, and a non-session route: none at all.
    for (path, cookie) in [("/open", None), ("/static/x", Some(cookie.as_str()))] {
        let answer = env.get(path, cookie, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(!answer.body.contains("x-user-"), "{path}: {}", answer.body);
    }
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_redis() {
    identity_headers(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_memory() {
    identity_headers(false).await;
}

/// A client can never forge an identity header: every spelling, every copy, removed on
/// protected, open and `session = false` routes, before the proxy sets its own.
async fn forged_identity_headers_are_removed(redis: bool) {
    let env = start(redis, HEADERS).await;
    let cookie = env.create(&json!({"user": {"id": 7}}).to_string()).await;
    let forged = [
        ("X-User-Id", "1"),
        ("x_user_id", "2"),
        ("X_USER_ID", "3"),
        ("x-user-id", "4"),
        ("x-user-name", "root"),
        ("X_User_Email", "root@example.com"),
    ];
    for (path, cookie, own) in [
        ("/account", Some(cookie.as_str()), Some("7")),
        ("/open", Some(cookie.as_str()), Some("7")),
        ("/open", None, None),
        ("/static/x", Some(cookie.as_str()), None),
    ] {
        let answer = env.get(path, cookie, &forged).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.received("x-user-id"), own.into_iter().collect::<Vec<_>>(), "{path}");
        for name in ["x_user_id", "x-user-name", "x_user_email", "x-user-email"] {
            assert!(answer.received(name).is_empty(), "{path}: {name} reached the app");
        }
    }
    assert!(env.metric("session_proxy_forged_headers_removed_total").await >= 24.0);
    assert_eq!(panics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_are_removed_redis() {
    forged_identity_headers_are_removed(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_are_removed_memory() {
    forged_identity_headers_are_removed(false).await;
}

/// A store that fails on the read: with `pass` the request has no session, so a protected
/// route sends it to log in or refuses it; with `fail` it is the store's 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_follows_on_store_error() {
    for (mode, browser, api) in [
        ("pass", StatusCode::FOUND, StatusCode::UNAUTHORIZED),
        ("fail", StatusCode::SERVICE_UNAVAILABLE, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let mut env =
            AppEnv::start_with(true, "", &format!("on_store_error = \"{mode}\"\n{HEADERS}"), ROUTES).await;
        let cookie = env.create(&json!({"user": {"id": 7}}).to_string()).await;
        match &mut env.backend {
            common::app::Backend::Redis(redis) => redis.stop(),
            common::app::Backend::Memory | common::app::Backend::Url(_) => unreachable!(),
        }
        let answer = env.get("/account", Some(&cookie), &[("accept", BROWSER)]).await;
        assert_eq!(answer.status, browser, "{mode}");
        assert!(answer.received("x-user-id").is_empty());
        let answer = env.get("/account", Some(&cookie), &[("accept", API)]).await;
        assert_eq!(answer.status, api, "{mode}");
    }
    assert_eq!(panics(), 0);
}

/// A reload applies `require`, `login_url` and the identity headers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_access_rules_and_identity_headers() {
    let env = start(false, HEADERS).await;
    let cookie = env.create(&json!({"user": {"id": 7, "team": "blue"}}).to_string()).await;
    assert_eq!(env.get("/open", None, &[("accept", API)]).await.status, StatusCode::OK);
    let config = common::config(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
url = "memory://"

[session]
secrets = ["test-secret"]
secure = false
login_url = "https://id.example/login"

[session.headers]
"x-team" = "/user/team"

[[route]]
prefix = "/"
upstream = "{app}"
require = "/user/team"
"#,
        app = env.app_url()
    ));
    env.proxy.reloader.apply(config).unwrap();
    let answer = env.get("/open", None, &[("accept", BROWSER)]).await;
    assert_eq!(answer.status, StatusCode::FOUND);
    assert_eq!(answer.headers["location"], "https://id.example/login?next=%2Fopen");
    let answer = env.get("/open", Some(&cookie), &[("x-user-id", "forged")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.received("x-team"), ["blue"]);
    // The old identity header is no longer set, nor stripped: an ordinary header again.
    assert_eq!(answer.received("x-user-id"), ["forged"]);
    assert_eq!(panics(), 0);
}
