//! Boxing a large future where it is built.
//!
//! `Box::pin(make())` builds the value on the stack and then copies it into the new box: for
//! the proxy's request future and fred's command futures (about 7 KiB each) that is a copy of
//! that size on every request. When the box exists before the call, the compiler has the call
//! write straight into it (`bench/profile.sh` shows the copy gone).

use std::mem::MaybeUninit;
use std::pin::Pin;

/// `Box::pin(make())`, without the copy.
pub(crate) fn pin_in_place<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    // `Box::new_uninit` would say this more briefly; it needs Rust 1.82, above the MSRV.
    let mut slot: Box<MaybeUninit<F>> = Box::new(MaybeUninit::uninit());
    slot.write(make());
    // SAFETY: the slot was initialised just above, and `MaybeUninit<F>` has `F`'s layout, so
    // the allocation is a valid `Box<F>`.
    Box::into_pin(unsafe { Box::from_raw(Box::into_raw(slot).cast::<F>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_it_was_given() {
        let boxed = pin_in_place(|| [7u8; 8192]);
        assert!(boxed.iter().all(|&b| b == 7));
    }
}
