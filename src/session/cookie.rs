// TEMPORARY STUB
use crate::config::SessionConfig;
pub struct Verified {
    pub id: String,
    pub needs_resign: bool,
}
pub struct CookieCodec;
impl CookieCodec {
    pub fn new(_c: &SessionConfig) -> Self {
        CookieCodec
    }
    pub fn read(&self, _h: &http::HeaderMap) -> Option<Verified> {
        None
    }
    pub fn set_cookie(&self, _id: &str) -> http::HeaderValue {
        http::HeaderValue::from_static("x")
    }
    pub fn clear_cookie(&self) -> http::HeaderValue {
        http::HeaderValue::from_static("x")
    }
}
