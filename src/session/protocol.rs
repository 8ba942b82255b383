// TEMPORARY STUB
pub const EMPTY_SESSION: &str = "{}";
pub fn empty_session() -> http::HeaderValue {
    http::HeaderValue::from_static("{}")
}
pub enum Update {
    Replace(String),
    Destroy,
}
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("dup")]
    Duplicate,
}
#[derive(Debug)]
pub struct NotAnObject;
pub fn parse_update(_v: &http::HeaderValue, _m: usize) -> Result<Update, UpdateError> {
    Ok(Update::Destroy)
}
pub fn to_request_header(_s: &[u8]) -> Result<http::HeaderValue, NotAnObject> {
    Err(NotAnObject)
}
pub fn strip_protocol_headers(_h: &mut http::HeaderMap, _n: &[&http::HeaderName]) -> usize {
    0
}
