//! Decoding requests and encoding downlinks, in JSON (canonical proto3 mapping) or protobuf.
//!
//! A payload that is not a request at all is `BAD_REQUEST`; a well-formed request naming an
//! operation the schema does not have is `UNKNOWN_OP`; a known operation with missing or
//! wrong-typed fields is `INVALID_ARGUMENT`. The request id is recovered whenever possible so the
//! error reply can be matched.

use bytes::Bytes;
use mqim_schemas::v1::{downlink, reply, Downlink, Event, Reply, Request};
use mqim_schemas::REQUEST_OPS;
use prost::Message as _;

use crate::error::ImError;
use crate::topics::Format;

/// Decodes a request; on failure returns the request id (if it could be read) and the error.
pub fn decode_request(format: Format, payload: &[u8]) -> Result<Request, (String, ImError)> {
    match format {
        Format::Pb => {
            let req = Request::decode(payload).map_err(|e| {
                (
                    String::new(),
                    ImError::bad_request(format!("not a protobuf Request: {e}")),
                )
            })?;
            if req.op.is_none() {
                return Err((
                    req.id,
                    ImError::new(
                        mqim_schemas::v1::ErrorCode::UnknownOp,
                        "the request carries no operation this server knows",
                    ),
                ));
            }
            Ok(req)
        }
        Format::Json => decode_json(payload),
    }
}

fn decode_json(payload: &[u8]) -> Result<Request, (String, ImError)> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        (
            String::new(),
            ImError::bad_request(format!("not JSON: {e}")),
        )
    })?;
    let obj = value.as_object().ok_or_else(|| {
        (
            String::new(),
            ImError::bad_request("a request is a JSON object"),
        )
    })?;
    let id = match obj.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => {
            return Err((String::new(), ImError::invalid("`id` must be a string")));
        }
        None => String::new(),
    };
    let ops: Vec<&String> = obj.keys().filter(|k| k.as_str() != "id").collect();
    match ops.as_slice() {
        [] => return Err((id, ImError::bad_request("the request has no operation"))),
        [op] if !REQUEST_OPS.contains(&op.as_str()) => {
            return Err((
                id,
                ImError::new(
                    mqim_schemas::v1::ErrorCode::UnknownOp,
                    format!(
                        "unknown operation {op:?}; known: {}",
                        REQUEST_OPS.join(", ")
                    ),
                ),
            ))
        }
        [_] => {}
        _ => {
            return Err((
                id,
                ImError::bad_request("a request carries exactly one operation"),
            ));
        }
    }
    serde_json::from_value::<Request>(value).map_err(|e| (id, ImError::invalid(e.to_string())))
}

/// Encodes a downlink in `format`.
pub fn encode(format: Format, d: &Downlink) -> Bytes {
    match format {
        Format::Pb => Bytes::from(d.encode_to_vec()),
        // Serializing generated types to a Vec cannot fail.
        Format::Json => Bytes::from(serde_json::to_vec(d).unwrap_or_default()),
    }
}

/// A reply downlink.
pub fn reply(id: String, result: reply::Result) -> Downlink {
    Downlink {
        kind: Some(downlink::Kind::Reply(Reply {
            id,
            result: Some(result),
        })),
    }
}

/// An error reply downlink.
pub fn error_reply(id: String, e: &ImError) -> Downlink {
    reply(
        id,
        reply::Result::Error(mqim_schemas::v1::Error {
            code: e.code as i32,
            message: e.message.clone(),
        }),
    )
}

/// An event downlink.
pub fn event(e: Event) -> Downlink {
    Downlink {
        kind: Some(downlink::Kind::Event(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqim_schemas::v1::ErrorCode;

    fn code(r: Result<Request, (String, ImError)>) -> (String, ErrorCode) {
        let (id, e) = r.unwrap_err();
        (id, e.code)
    }

    #[test]
    fn json_errors_are_classified_and_keep_the_request_id() {
        assert_eq!(
            code(decode_request(Format::Json, b"{nope")).1,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(decode_request(Format::Json, b"[1]")).1,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(decode_request(
                Format::Json,
                br#"{"id":"7","frobnicate":{}}"#
            )),
            ("7".into(), ErrorCode::UnknownOp)
        );
        assert_eq!(
            code(decode_request(
                Format::Json,
                br#"{"id":"8","send":{"to":5}}"#
            )),
            ("8".into(), ErrorCode::InvalidArgument)
        );
        assert_eq!(
            code(decode_request(Format::Json, br#"{"id":"9"}"#)),
            ("9".into(), ErrorCode::BadRequest)
        );
        assert!(decode_request(Format::Json, br#"{"id":"1","sync":{"afterSeq":"3"}}"#).is_ok());
    }

    #[test]
    fn protobuf_garbage_is_a_bad_request() {
        assert_eq!(
            code(decode_request(Format::Pb, &[0xff, 0xff, 0xff])).1,
            ErrorCode::BadRequest
        );
    }
}
