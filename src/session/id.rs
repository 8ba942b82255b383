// TEMPORARY STUB
pub fn new_id() -> String {
    String::new()
}
