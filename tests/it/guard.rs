//! The request guard, attacked over real HTTP: a page that rebinds its name to 127.0.0.1, a
//! foreign page posting to a loopback server (with CORS `*` configured, which must not open
//! state-changing requests), form posts that skip the JSON content type, and bodies over the one
//! JSON body limit, on every route of the OpenAPI document and on `/mcp`.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::TestServer;

const ATTACKER: &str = "http://attacker.example";
/// CORS `*` is refused without a key (any page could read everything), so this server has one.
const KEY: &str = "guard-key";

/// The error code of a refusal, with its status checked.
async fn refusal(response: reqwest::Response, expected: StatusCode, what: &str) -> String {
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, expected, "{what}: {body}");
    let value: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
    value["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not the error shape: {body}"))
        .to_string()
}

/// Every route and method of the OpenAPI document, with its parameters filled in, plus the
/// routes outside it.
async fn every_route(server: &TestServer, id: &str) -> Vec<(reqwest::Method, String)> {
    let document: Value = server
        .get("/openapi.json")
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("openapi JSON");
    let paths = document["paths"].as_object().expect("paths");
    let mut routes = Vec::new();
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", id)
            .replace("{path}", "x.txt")
            .replace("{server}", "time")
            .replace("{tool}", "now")
            .replace("{execution_id}", "exe_none");
        for method in item.as_object().expect("path item").keys() {
            let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .expect("method");
            routes.push((method, concrete.clone()));
        }
    }
    assert!(routes.len() >= 20, "too few routes: {routes:?}");
    for extra in ["/health", "/openapi.json", "/docs"] {
        routes.push((reqwest::Method::GET, extra.to_string()));
    }
    for method in [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::DELETE,
    ] {
        routes.push((method, "/mcp".to_string()));
    }
    routes
}

#[tokio::test]
async fn a_rebound_or_foreign_page_is_refused_on_every_route() {
    let Some(server) = TestServer::start_with_cors("guard-rebind", &[KEY], &["*"], |_| {}).await
    else {
        return;
    };
    let created: Value = server
        .post("/containers")
        .header("x-api-key", KEY)
        .json(&json!({"tag": "guard"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("created");
    let id = created["id"].as_str().expect("id").to_string();
    let routes = every_route(&server, &id).await;

    for (method, path) in &routes {
        let what = format!("{method} {path}");
        // DNS rebinding: the page's own name, now pointing at 127.0.0.1.
        let rebound = server
            .http
            .request(method.clone(), server.url(path))
            .header("x-api-key", KEY)
            .header("host", "attacker.example")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("send");
        if *method == reqwest::Method::HEAD {
            // A HEAD answer has no body to carry the code: the status says it.
            assert_eq!(rebound.status(), StatusCode::FORBIDDEN, "{what}");
            continue;
        }
        assert_eq!(
            refusal(rebound, StatusCode::FORBIDDEN, &what).await,
            "host_not_allowed",
            "{what}"
        );
        // A foreign page posting to the loopback server by its real address.
        if *method != reqwest::Method::GET || path == "/mcp" {
            let foreign = server
                .http
                .request(method.clone(), server.url(path))
                .header("x-api-key", KEY)
                .header("origin", ATTACKER)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("send");
            assert_eq!(
                refusal(foreign, StatusCode::FORBIDDEN, &what).await,
                "origin_not_allowed",
                "{what}"
            );
        }
    }

    // Reads stay CORS's business: with `*`, a foreign page may read, with the CORS header.
    let read = server
        .get("/containers")
        .header("x-api-key", KEY)
        .header("origin", ATTACKER)
        .send()
        .await
        .expect("read");
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(
        read.headers()
            .get("access-control-allow-origin")
            .and_then(|value| value.to_str().ok()),
        Some("*")
    );
    // The loopback page (MCP Inspector) and no page at all still get through.
    let inspector = server
        .post("/containers")
        .header("x-api-key", KEY)
        .header("origin", "http://localhost:6274")
        .json(&json!({"tag": "inspector"}))
        .send()
        .await
        .expect("inspector create");
    assert_eq!(inspector.status(), StatusCode::CREATED);
    let second: Value = inspector.json().await.expect("second");

    // Nothing the refused requests asked for happened: exactly the two sandboxes, and the
    // first one still runs code.
    let listed: Value = server
        .get("/containers")
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("list JSON");
    let mut ids: Vec<&str> = listed["containers"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|sandbox| sandbox["id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![id.as_str(), second["id"].as_str().expect("id")];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let ran: Value = server
        .post(&format!("/containers/{id}/execute"))
        .header("x-api-key", KEY)
        .json(&json!({"code": "print(6 * 7)"}))
        .send()
        .await
        .expect("execute")
        .json()
        .await
        .expect("executed");
    assert_eq!(ran["stdout"], "42\n", "{ran}");
}

#[tokio::test]
async fn json_routes_refuse_form_posts_and_bodies_over_the_one_limit() {
    let Some(server) = TestServer::start("guard-body", &[]).await else {
        return;
    };
    // A form post is what a page can send anywhere without a CORS preflight.
    for (path, content_type) in [
        ("/containers", "text/plain"),
        ("/containers", "application/x-www-form-urlencoded"),
        (
            "/containers/sbx_none/execute",
            "multipart/form-data; boundary=x",
        ),
        ("/containers/sbx_none/mcp-proxy/time", "text/plain"),
        ("/mcp", "text/plain"),
    ] {
        let response = server
            .post(path)
            .header("content-type", content_type)
            .body(r#"{"tag": "form"}"#)
            .send()
            .await
            .expect("send");
        assert_eq!(
            refusal(
                response,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("{path} {content_type}")
            )
            .await,
            "unsupported_media_type"
        );
    }
    let listed: Value = server
        .get("/containers")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("list JSON");
    assert_eq!(
        listed,
        json!({"containers": []}),
        "a form post created a sandbox"
    );

    // One JSON body limit (8 MiB) on every face.
    let huge = format!(r#"{{"code": "{}"}}"#, "#".repeat(9 * 1024 * 1024));
    for path in [
        "/containers/sbx_none/execute",
        "/containers/sbx_none/mcp-proxy/time",
        "/mcp",
    ] {
        let response = server
            .post(path)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(huge.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(
            refusal(response, StatusCode::PAYLOAD_TOO_LARGE, path).await,
            "too_large"
        );
    }
    // Under the limit, /mcp still reads the body (and answers as MCP does).
    let initialize = server
        .post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "guard-test", "version": "1"}}
        }))
        .send()
        .await
        .expect("initialize");
    assert_eq!(initialize.status(), StatusCode::OK);
}
