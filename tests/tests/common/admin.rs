//! The admin REST API as an operator's script calls it: real HTTP (reqwest) to a real broker's
//! admin listener. Every response is checked against the broker's own OpenAPI document
//! (`/api/v1/openapi.json`): status documented for the operation, body valid for its schema.

use serde_json::{json, Value};

use super::{Broker, SECRET};

/// An admin JWT for `name` valid for `ttl_secs` (negative: expired), signed with the test secret.
pub fn admin_token(name: &str, ttl_secs: i64) -> String {
    super::sign(json!({"sub": name, "adm": true}), ttl_secs, SECRET)
}

/// A client of one broker's admin API.
pub struct Api {
    pub base: String,
    http: reqwest::Client,
    pub token: Option<String>,
    doc: Value,
}

impl Api {
    /// Talks to `b` as admin `root`.
    pub async fn new(b: &Broker) -> Api {
        let port = b.admin_port.expect("the broker has an admin listener");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let doc: Value = http
            .get(format!("{base}/api/v1/openapi.json"))
            .send()
            .await
            .expect("openapi.json")
            .json()
            .await
            .expect("openapi.json is JSON");
        Api {
            base,
            http,
            token: Some(admin_token("root", 3600)),
            doc,
        }
    }

    /// The same API with another bearer token (None: no Authorization header).
    pub fn with_token(&self, token: Option<String>) -> Api {
        Api {
            base: self.base.clone(),
            http: self.http.clone(),
            token,
            doc: self.doc.clone(),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body.to_string()))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body.to_string()))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Any path outside the API (`/metrics`, the console): status and text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: {status} not JSON ({e}): {text}"))
        };
        // readyz answers 503 with its health body, as probes expect; every other error is JSON.
        if status >= 400 && !path.ends_with("/readyz") {
            assert!(
                value["error"]["code"].is_string() && value["error"]["message"].is_string(),
                "{method} {path}: error {status} without the JSON error shape: {value}"
            );
        }
        assert_ne!(status, 500, "{method} {path}: a 500 for {value}");
        self.check_against_doc(&method, path, status, &value);
        (status, value)
    }

    /// The document must describe the operation, the status and the body's shape.
    fn check_against_doc(&self, method: &reqwest::Method, path: &str, status: u16, body: &Value) {
        let path = path.split('?').next().unwrap();
        let Some((template, op)) = self.operation(method, path) else {
            // Undocumented paths answer 404 (and so do documented paths with bad methods: 405).
            assert!(
                status == 404 || status == 405,
                "{method} {path} is not in openapi.json but answered {status}"
            );
            return;
        };
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "{method} {template}: status {status} is not documented ({body})"
        );
        if let Some(schema) = resp.pointer("/content/application~1json/schema") {
            let mut errors = Vec::new();
            self.validate(schema, body, "$", &mut errors);
            assert!(
                errors.is_empty(),
                "{method} {template} {status}: body does not match the document: {errors:?}\n{body}"
            );
        }
    }

    fn operation(&self, method: &reqwest::Method, path: &str) -> Option<(String, &Value)> {
        let want: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        for (template, item) in paths {
            let t: Vec<&str> = template.split('/').collect();
            let matches = t.len() == want.len()
                && t.iter()
                    .zip(&want)
                    .all(|(a, b)| a == b || (a.starts_with('{') && !b.is_empty()));
            if matches {
                let op = &item[method.as_str().to_lowercase()];
                return op.is_object().then(|| (template.clone(), op));
            }
        }
        None
    }

    /// A small JSON Schema check (what utoipa emits: $ref, type incl. null, properties,
    /// required, items, oneOf).
    fn validate(&self, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.trim_start_matches("#/components/schemas/");
            let target = &self.doc["components"]["schemas"][name];
            assert!(target.is_object(), "dangling $ref {r}");
            return self.validate(target, v, at, errors);
        }
        if let Some(alts) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
            let ok = alts.iter().any(|s| {
                let mut e = Vec::new();
                self.validate(s, v, at, &mut e);
                e.is_empty()
            });
            if !ok {
                errors.push(format!("{at}: matches none of oneOf"));
            }
            return;
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return,
        };
        let ok = types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => true,
        });
        if !ok {
            errors.push(format!("{at}: {v} is not {types:?}"));
            return;
        }
        if let (Some(obj), Some(props)) = (v.as_object(), schema["properties"].as_object()) {
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap();
                if !obj.contains_key(r) {
                    errors.push(format!("{at}: required `{r}` missing"));
                }
            }
            for (k, val) in obj {
                match props.get(k) {
                    Some(s) => self.validate(s, val, &format!("{at}.{k}"), errors),
                    None => errors.push(format!("{at}: `{k}` is not in the document")),
                }
            }
        }
        if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
            for (i, x) in arr.iter().enumerate() {
                self.validate(items, x, &format!("{at}[{i}]"), errors);
            }
        }
    }
}
