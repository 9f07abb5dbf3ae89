// SPDX-License-Identifier: MIT
//
// libmultifd from Rust, through bindings bindgen generated from
// include/multifd/multifd.h (nothing written by hand on the C side).
//
// Two migration objects in one process: the source owns 8 MiB of guest RAM
// filled with a pattern, and a vm_stop hook written in Rust; the destination,
// on a thread of its own, starts with empty RAM.  They are connected by
// socketpairs (a main channel and two multifd channels) handed over with
// mfd_migrate_channels() / mfd_migrate_incoming_channels().  The program
// checks that the destination's RAM equals the source's, that the hook ran
// once, and prints "rust: ok ...".  Standard library only.
//
// Built by `make` when rustc and bindgen are installed (examples/rust/README.md):
//   bindgen include/multifd/multifd.h --allowlist-function 'mfd_.*' ... -o bindings.rs
//   MFD_BINDINGS=$PWD/bindings.rs rustc --edition 2021 main.rs -L . -l multifd

#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code)]

mod ffi {
    include!(env!("MFD_BINDINGS"));
}

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::{CStr, CString};
use std::os::raw::{c_int, c_void};
use std::os::unix::io::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

const RAM_SIZE: usize = 8 << 20;
const PAGE: usize = 4096;
const CHANNELS: usize = 2;

/// An error from the library: its code and message, owned by Rust.
#[derive(Debug)]
struct MfdError {
    code: c_int,
    message: String,
}

/// Turn a library return code and its error object into a Result, freeing
/// the object.
fn check(r: c_int, err: *mut ffi::mfd_error) -> Result<c_int, MfdError> {
    if r >= 0 {
        return Ok(r);
    }
    let message = if err.is_null() {
        String::from("(no message)")
    } else {
        unsafe { CStr::from_ptr(ffi::mfd_error_message(err)) }
            .to_string_lossy()
            .into_owned()
    };
    unsafe { ffi::mfd_error_free(err) };
    Err(MfdError { code: r, message })
}

/// Page-aligned guest RAM, freed on drop.
struct GuestRam {
    ptr: *mut u8,
    layout: Layout,
}

impl GuestRam {
    fn new(size: usize) -> GuestRam {
        let layout = Layout::from_size_align(size, PAGE).expect("layout");
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for guest RAM");
        GuestRam { ptr, layout }
    }
    fn bytes(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

// The memory is ours alone: moving it to another thread is sound.
unsafe impl Send for GuestRam {}

impl Drop for GuestRam {
    fn drop(&mut self) {
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// A migration object, freed on drop.
struct Migration(*mut ffi::mfd_migration);

unsafe impl Send for Migration {}

impl Migration {
    fn new() -> Result<Migration, MfdError> {
        let mut m: *mut ffi::mfd_migration = ptr::null_mut();
        let mut err: *mut ffi::mfd_error = ptr::null_mut();
        check(unsafe { ffi::mfd_migration_new(&mut m, &mut err) }, err)?;
        Ok(Migration(m))
    }

    fn set_param(&self, name: &str, value: &str) -> Result<(), MfdError> {
        let (n, v) = (CString::new(name).unwrap(), CString::new(value).unwrap());
        let mut err: *mut ffi::mfd_error = ptr::null_mut();
        check(unsafe { ffi::mfd_set_param(self.0, n.as_ptr(), v.as_ptr(), &mut err) }, err)?;
        Ok(())
    }

    /// Register @ram as block "pc.ram" with a descriptor.
    fn add_ram(&self, ram: &GuestRam, fresh: bool) -> Result<(), MfdError> {
        let name = CString::new("pc.ram").unwrap();
        let mut d: ffi::mfd_ram_block_desc = unsafe { std::mem::zeroed() };
        d.size = std::mem::size_of::<ffi::mfd_ram_block_desc>() as u32;
        d.flags = if fresh { ffi::MFD_RAM_FRESH } else { 0 };
        d.name = name.as_ptr();
        d.host = ram.ptr as *mut c_void;
        d.length = ram.layout.size() as u64;
        d.page_size = PAGE as u64;
        d.fd = -1;
        let mut err: *mut ffi::mfd_error = ptr::null_mut();
        check(unsafe { ffi::mfd_ram_block_register(self.0, &d, &mut err) }, err)?;
        Ok(())
    }

    fn wait(&self) -> Result<(), MfdError> {
        let mut err: *mut ffi::mfd_error = ptr::null_mut();
        check(unsafe { ffi::mfd_migration_wait(self.0, 60000, &mut err) }, err)?;
        Ok(())
    }
}

impl Drop for Migration {
    fn drop(&mut self) {
        unsafe { ffi::mfd_migration_free(self.0) };
    }
}

/// A channel set over our ends of the socketpairs; the library takes (and
/// closes) every descriptor.
fn channel_set(
    main: UnixStream,
    multifd: Vec<UnixStream>,
    chans: &mut Vec<*mut ffi::mfd_channel>,
) -> Result<ffi::mfd_channel_set, MfdError> {
    let wrap = |s: UnixStream, name: &str| -> Result<*mut ffi::mfd_channel, MfdError> {
        let n = CString::new(name).unwrap();
        let mut ch: *mut ffi::mfd_channel = ptr::null_mut();
        let mut err: *mut ffi::mfd_error = ptr::null_mut();
        let fd = s.into_raw_fd();
        check(
            unsafe { ffi::mfd_channel_new_fd(fd, ffi::MFD_CHANNEL_OWN_FD, n.as_ptr(), &mut ch, &mut err) },
            err,
        )?;
        Ok(ch)
    };
    let main_ch = wrap(main, "main")?;
    for (i, s) in multifd.into_iter().enumerate() {
        chans.push(wrap(s, &format!("multifd-{}", i))?);
    }
    let mut set: ffi::mfd_channel_set = unsafe { std::mem::zeroed() };
    set.size = std::mem::size_of::<ffi::mfd_channel_set>() as u32;
    set.main = main_ch;
    set.nmultifd = chans.len() as u32;
    set.multifd = chans.as_mut_ptr();
    Ok(set)
}

static VM_STOPS: AtomicU32 = AtomicU32::new(0);
static LAST_STATE: AtomicU32 = AtomicU32::new(0);

/// The source's vm_stop hook: nothing runs in this guest, so stopping it is
/// counting.  Called by a library thread.
extern "C" fn vm_stop(_opaque: *mut c_void, _errp: *mut *mut ffi::mfd_error) -> c_int {
    VM_STOPS.fetch_add(1, Ordering::SeqCst);
    0
}

/// Every state change, as an int (enum mfd_state): FFI needs no enum layout.
extern "C" fn state_changed(_opaque: *mut c_void, _from: c_int, to: c_int) {
    LAST_STATE.store(to as u32, Ordering::SeqCst);
}

fn run() -> Result<String, MfdError> {
    let channels = CHANNELS.to_string();

    // The connections, made before any migration thread exists.
    let (src_main, dst_main) = UnixStream::pair().expect("socketpair");
    let mut src_mf = Vec::new();
    let mut dst_mf = Vec::new();
    for _ in 0..CHANNELS {
        let (a, b) = UnixStream::pair().expect("socketpair");
        src_mf.push(a);
        dst_mf.push(b);
    }

    // The destination, on its own thread: empty RAM, declared fresh.
    let dst_thread = std::thread::spawn(move || -> Result<GuestRam, MfdError> {
        let ram = GuestRam::new(RAM_SIZE);
        let m = Migration::new()?;
        m.add_ram(&ram, true)?;
        m.set_param("multifd-channels", &CHANNELS.to_string())?;
        let mut chans = Vec::new();
        let set = channel_set(dst_main, dst_mf, &mut chans)?;
        let mut err: *mut ffi::mfd_error = ptr::null_mut();
        check(unsafe { ffi::mfd_migrate_incoming_channels(m.0, &set, &mut err) }, err)?;
        m.wait()?;
        Ok(ram)
    });

    // The source: a pattern in every page but every fourth (zero pages).
    let mut ram = GuestRam::new(RAM_SIZE);
    for (i, page) in ram.bytes_mut().chunks_mut(PAGE).enumerate() {
        if i % 4 != 3 {
            for (j, b) in page.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31).wrapping_add(j as u8);
            }
        }
    }
    let m = Migration::new()?;
    m.add_ram(&ram, false)?;
    m.set_param("multifd-channels", &channels)?;
    let mut hooks: ffi::mfd_vmm_hooks = unsafe { std::mem::zeroed() };
    hooks.size = std::mem::size_of::<ffi::mfd_vmm_hooks>() as u32;
    hooks.vm_stop = Some(vm_stop);
    hooks.state_changed = Some(state_changed);
    let mut err: *mut ffi::mfd_error = ptr::null_mut();
    check(unsafe { ffi::mfd_migration_set_hooks(m.0, &hooks, ptr::null_mut(), &mut err) }, err)?;
    let mut chans = Vec::new();
    let set = channel_set(src_main, src_mf, &mut chans)?;
    let mut err: *mut ffi::mfd_error = ptr::null_mut();
    check(unsafe { ffi::mfd_migrate_channels(m.0, &set, &mut err) }, err)?;
    m.wait()?;

    let dst_ram = dst_thread.join().expect("destination thread panicked")?;
    let bad = ram
        .bytes()
        .chunks(PAGE)
        .zip(dst_ram.bytes().chunks(PAGE))
        .filter(|(a, b)| a != b)
        .count();
    let stops = VM_STOPS.load(Ordering::SeqCst);
    let state = LAST_STATE.load(Ordering::SeqCst);
    if bad != 0 || stops != 1 || state != ffi::mfd_state_MFD_STATE_COMPLETED as u32 {
        return Err(MfdError {
            code: -1,
            message: format!("{} pages differ, vm_stop ran {} times, last state {}", bad, stops, state),
        });
    }
    let version = unsafe { CStr::from_ptr(ffi::mfd_version_string()) };
    Ok(format!(
        "{} MiB over a main and {} multifd channels, libmultifd {}",
        RAM_SIZE >> 20,
        CHANNELS,
        version.to_string_lossy()
    ))
}

fn main() {
    match run() {
        Ok(what) => println!("rust: ok: {}", what),
        Err(e) => {
            eprintln!("rust: failed ({}): {}", e.code, e.message);
            std::process::exit(1);
        }
    }
}
