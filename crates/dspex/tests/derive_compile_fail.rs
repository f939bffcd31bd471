//! Misuses of `#[derive(Signature)]` and `#[derive(FieldValue)]` are
//! compile errors that point at the offending field, type or attribute
//! (expected messages in `derive_ui/*.stderr`; regenerate with
//! `TRYBUILD=overwrite cargo test -p dspex --test derive_compile_fail`).

#[test]
fn derive_misuse_is_a_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/derive_ui/*.rs");
}
