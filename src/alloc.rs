//! The global allocator: mimalloc, called the way its fast paths expect.
//!
//! A proxied request allocates and frees a handful of blocks (the request's future, hyper's
//! buffers, channel slots), and glibc's allocator takes a slow path for every block above its
//! 1 KiB thread cache. mimalloc's per-thread pages serve them in a few dozen instructions
//! (`bench/profile.sh`; the README's Allocator section has the numbers). It is built without
//! transparent huge pages (`no_thp` in Cargo.toml), which would cost memory for nothing.
//!
//! Not the `mimalloc` crate's allocator: that one asks for every block through
//! `mi_malloc_aligned`, which serves blocks above 1 KiB through its generic aligned path
//! even at the alignment `mi_malloc` guarantees anyway. Here only a stricter alignment
//! goes that way.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// The alignment every `mi_malloc` block of at least this size has (`MI_MAX_ALIGN_SIZE`, C's
/// `max_align_t`, which mimalloc keeps so that it can replace `malloc`); smaller blocks are
/// aligned to their size class only. The same rule as std's `System` allocator on glibc.
const MALLOC_ALIGN: usize = 16;

/// Whether `mi_malloc` gives the layout's alignment.
fn plain(layout: Layout) -> bool {
    layout.align() <= MALLOC_ALIGN && layout.align() <= layout.size()
}

/// The process's allocator, installed by the binary with `#[global_allocator]`.
pub struct Mimalloc;

// SAFETY: every method hands mimalloc a layout it serves with at least the alignment asked
// for, and frees only what mimalloc allocated (`mi_free` takes blocks of any alignment).
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        if plain(layout) && plain(new) {
            mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for_and_keep_their_bytes() {
        for &(size, align) in &[
            (1, 1),
            (3, 4),
            (8, 8),
            (24, 8),
            (24, 16),
            (48, 16),
            (4000, 8),
            (8192, 16),
            (8, 16),
            (64, 128),
            (200, 4096),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero size; each block is written within its size and freed once.
            unsafe {
                let p = Mimalloc.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                p.write_bytes(0xa5, size);
                let grown = Mimalloc.realloc(p, layout, size * 3);
                assert_eq!(grown as usize % align, 0, "realloc: size {size}, align {align}");
                assert!((0..size).all(|i| *grown.add(i) == 0xa5));
                Mimalloc.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                let z = Mimalloc.alloc_zeroed(layout);
                assert_eq!(z as usize % align, 0);
                assert!((0..size).all(|i| *z.add(i) == 0));
                Mimalloc.dealloc(z, layout);
            }
        }
    }
}
