// TEMPORARY STUB
use crate::config::StoreConfig;
#[derive(Clone)]
pub struct Store;
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("t")]
    Timeout,
}
impl StoreError {
    pub fn kind(&self) -> &'static str {
        "timeout"
    }
}
impl Store {
    pub async fn connect(_c: &StoreConfig) -> Result<Store, StoreError> {
        Ok(Store)
    }
    pub async fn get(&self, _k: &str, _r: Option<u64>) -> Result<Option<bytes::Bytes>, StoreError> {
        Ok(None)
    }
    pub async fn set(&self, _k: &str, _v: &str, _t: u64) -> Result<(), StoreError> {
        Ok(())
    }
    pub async fn del(&self, _k: &str) -> Result<(), StoreError> {
        Ok(())
    }
    pub async fn rename_with(
        &self,
        _o: &str,
        _n: &str,
        _v: &str,
        _t: u64,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    pub async fn shutdown(&self) {}
}
