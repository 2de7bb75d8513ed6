//! Bad input on the bus API: malformed and truncated msgpack, requests of the wrong shape,
//! deeply nested and large payloads, odd subjects and reply subjects. Each gets a
//! Status with a 4xx code (or, where there is nobody to answer, no answer), within 10 s,
//! and the gateway keeps serving.

mod common;

use capstan_bus::{ApiRequest, ApiResponse};
use common::Cluster;
use std::time::{Duration, Instant};

fn request(verb: &str, resource: &str, body: Option<serde_json::Value>) -> ApiRequest {
    let mut r: ApiRequest = serde_json::from_value(serde_json::json!({
        "verb": verb, "group": "", "version": "v1", "resource": resource, "namespace": "default",
    }))
    .expect("a request");
    r.body = body;
    r
}

#[test]
fn malformed_bus_requests_get_a_status_and_the_gateway_lives_on() {
    let c = Cluster::start_multiprocess(0, &[]);
    let url = c.nats().expect("nats").url();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let nc = async_nats::connect(&url).await.expect("connect to NATS");
        let subject = "capstan.v1.api.controllers";
        let valid = request("create", "configmaps", Some(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ok"}})))
        .to_bytes()
        .expect("encode");
        // A msgpack array of one element, 100,000 deep, around a nil.
        let mut nested = vec![0x91u8; 100_000];
        nested.push(0xc0);
        let mut deep_body = serde_json::json!("x");
        for _ in 0..200 {
            deep_body = serde_json::json!([deep_body]);
        }
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty payload", Vec::new()),
            ("not msgpack", b"GET /api/v1/pods HTTP/1.1\r\n".to_vec()),
            ("truncated msgpack", valid[..valid.len() / 2].to_vec()),
            ("msgpack of the wrong shape", rmp_serde_bytes(&serde_json::json!([1, 2, 3]))),
            ("a map without a verb", rmp_serde_bytes(&serde_json::json!({"group": "", "resource": "pods"}))),
            ("100,000 nested arrays", nested),
            (
                "an unknown verb",
                request("explode", "configmaps", None).to_bytes().expect("encode").to_vec(),
            ),
            ("an unknown resource", request("list", "nonsense", None).to_bytes().expect("encode").to_vec()),
            (
                "a body nested 200 deep",
                request("create", "configmaps", Some(deep_body)).to_bytes().expect("encode").to_vec(),
            ),
            (
                "a 900 KB body",
                request(
                    "create",
                    "configmaps",
                    Some(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
                        "data": {"k": "x".repeat(900_000)}})),
                )
                .to_bytes()
                .expect("encode")
                .to_vec(),
            ),
        ];
        cases.push(("the valid request", valid.to_vec()));
        for (what, payload) in cases {
            let t = Instant::now();
            let reply = tokio::time::timeout(Duration::from_secs(10), nc.request(subject, payload.into()))
                .await
                .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
                .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
            let resp = ApiResponse::from_bytes(&reply.payload).unwrap_or_else(|e| panic!("{what}: undecodable answer: {e}"));
            let short = resp.body.to_string().chars().take(300).collect::<String>();
            if what == "the valid request" || what.starts_with("a 900 KB") {
                // A ConfigMap under 1 MiB is valid, as upstream.
                assert_eq!(resp.code, 201, "{what}: {short}");
            } else {
                assert!((400..500).contains(&resp.code), "{what}: {} {short}", resp.code);
                assert_eq!(resp.body["kind"], "Status", "{what}: {short}");
                assert!(!resp.body["message"].as_str().unwrap_or("").is_empty(), "{what}: no message");
            }
            eprintln!("{what}: {} in {:?}", resp.code, t.elapsed());
        }
        // A request whose reply subject is not an inbox, and one on a subject with no
        // identity: no answer, and nothing breaks.
        nc.publish_with_reply("capstan.v1.api.controllers", "capstan.v1.events.core.configmaps.x", valid.clone())
            .await
            .expect("publish");
        let r = tokio::time::timeout(Duration::from_secs(2), nc.request("capstan.v1.api.", valid.clone())).await;
        assert!(!matches!(r, Ok(Ok(_))), "an answer to a request without an identity");
        nc.flush().await.expect("flush");
    });
    // The gateway is alive and the valid request's object is there.
    c.ok(&["get", "configmap", "ok"]);
}

fn rmp_serde_bytes(v: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    serde::Serialize::serialize(v, &mut rmp_serde::Serializer::new(&mut out).with_struct_map())
        .expect("encode");
    out
}
