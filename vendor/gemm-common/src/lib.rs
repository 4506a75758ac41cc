#![cfg_attr(not(feature = "std"), no_std)]

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

#[cfg(feature = "wasm-simd128-enable")]
pub const DEFAULT_WASM_SIMD128: bool = true;

#[cfg(not(feature = "wasm-simd128-enable"))]
pub const DEFAULT_WASM_SIMD128: bool = false;

static WASM_SIMD128: AtomicBool = AtomicBool::new(DEFAULT_WASM_SIMD128);

#[inline]
pub fn get_wasm_simd128() -> bool {
    WASM_SIMD128.load(Relaxed)
}
#[inline]
pub fn set_wasm_simd128(enable: bool) {
    WASM_SIMD128.store(enable, Relaxed)
}

/// runner's patch (PATCH.md): whether the AVX-512 kernels (feature `x86-v4`) may be
/// chosen where the CPU has them. Off gives the AVX2+FMA kernels on every x86-64 CPU,
/// whose results are the same bits on all of them. Unset until first read, which takes it
/// from the environment (`RUNNER_KERNELS=portable`: off), so that no product runs before
/// the environment's choice applies; `set_x86_v4` overrides it. Read at every call.
static X86_V4: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(X86_V4_UNSET);
const X86_V4_UNSET: u8 = 0;
const X86_V4_ON: u8 = 1;
const X86_V4_OFF: u8 = 2;

#[inline]
pub fn get_x86_v4() -> bool {
    match X86_V4.load(Relaxed) {
        X86_V4_UNSET => {
            #[cfg(feature = "std")]
            let on = std::env::var("RUNNER_KERNELS").map_or(true, |v| v != "portable");
            #[cfg(not(feature = "std"))]
            let on = true;
            let wanted = if on { X86_V4_ON } else { X86_V4_OFF };
            // A concurrent `set_x86_v4` wins over the environment.
            match X86_V4.compare_exchange(X86_V4_UNSET, wanted, Relaxed, Relaxed) {
                Ok(_) => on,
                Err(now) => now == X86_V4_ON,
            }
        }
        v => v == X86_V4_ON,
    }
}
#[inline]
pub fn set_x86_v4(enable: bool) {
    X86_V4.store(if enable { X86_V4_ON } else { X86_V4_OFF }, Relaxed)
}

extern crate alloc;

pub mod cache;

pub mod gemm;
pub mod gemv;
pub mod gevv;

pub mod horizontal_microkernel;
pub mod microkernel;

pub mod pack_operands;
pub mod simd;

pub use pulp;

#[derive(Copy, Clone, Debug)]
pub enum Parallelism {
    None,
    #[cfg(feature = "rayon")]
    Rayon(usize),
}

pub struct Ptr<T: ?Sized>(pub *mut T);

impl<T: ?Sized> Clone for Ptr<T> {
    #[inline]
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for Ptr<T> {}

unsafe impl<T: ?Sized> Send for Ptr<T> {}
unsafe impl<T: ?Sized> Sync for Ptr<T> {}

impl<T> Ptr<T> {
    #[inline(always)]
    pub fn wrapping_offset(self, offset: isize) -> Self {
        Ptr::<T>(self.0.wrapping_offset(offset))
    }
    #[inline(always)]
    pub fn wrapping_add(self, offset: usize) -> Self {
        Ptr::<T>(self.0.wrapping_add(offset))
    }
}

#[cfg(not(feature = "std"))]
#[macro_export]
macro_rules! feature_detected {
    ($tt: tt) => {
        cfg!(feature = $tt)
    };
}

#[cfg(all(feature = "std", any(target_arch = "x86", target_arch = "x86_64")))]
#[macro_export]
macro_rules! feature_detected {
    ($tt: tt) => {
        ::std::arch::is_x86_feature_detected!($tt)
    };
}
#[cfg(all(feature = "std", target_arch = "aarch64"))]
#[macro_export]
macro_rules! feature_detected {
    ($tt: tt) => {
        ::std::arch::is_aarch64_feature_detected!($tt)
    };
}
#[cfg(all(feature = "std", target_family = "wasm"))]
#[macro_export]
macro_rules! feature_detected {
    ("simd128") => {
        $crate::get_wasm_simd128()
    };
}
