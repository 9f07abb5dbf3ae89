// SPDX-License-Identifier: MIT
//
// bindgen's layout tests for the bindings of include/multifd/multifd.h: the
// size, alignment and member offsets of every public struct as Rust lays it
// out, against what clang computed from the header.  `rustc --test` builds
// them; the embed suite runs them.

#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code)]
#![allow(deref_nullptr)]

include!(env!("MFD_BINDINGS"));
