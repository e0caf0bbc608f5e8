//! `jsonb` arguments taken as the text Postgres prints for them
//! (`jsonb_out`), unparsed. pgrx's `JsonB` parses that text into a
//! `serde_json::Value`, which (without serde_json's arbitrary precision)
//! rounds numbers to doubles, so `ds.append(path, jsonb)` stored
//! `12345678901234567890123` as `1.2345678901234568e+22`; and whose
//! recursion limit turned a value nested deeper than 128 levels into a
//! panic (XX000) before the extension's own depth check could name it.
//! The text goes through the same JSON parser as a text body instead:
//! every digit kept, the same limits and SQLSTATEs.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::prelude::*;
use pgrx::{FromDatum, direct_function_call};

/// A `jsonb` value as text, in jsonb's key order.
pub struct JsonbText(pub Vec<u8>);

impl FromDatum for JsonbText {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<JsonbText> {
        if is_null {
            return None;
        }
        // SAFETY: a non-null datum of an argument declared jsonb.
        unsafe {
            let varlena = datum.cast_mut_ptr();
            let detoasted = pg_sys::pg_detoast_datum_packed(varlena);
            let text = direct_function_call::<&core::ffi::CStr>(
                pg_sys::jsonb_out,
                &[Some(pg_sys::Datum::from(detoasted))],
            )?;
            let bytes = text.to_bytes().to_vec();
            pg_sys::pfree(text.as_ptr().cast_mut().cast());
            if detoasted != varlena {
                pg_sys::pfree(detoasted.cast());
            }
            Some(JsonbText(bytes))
        }
    }
}

// SAFETY: the argument is declared as jsonb, which `from_polymorphic_datum`
// reads.
unsafe impl SqlTranslatable for JsonbText {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(JsonbText);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}

// SAFETY: unboxed with `FromDatum`, as pgrx does for its own `JsonB`.
unsafe impl<'fcx> ArgAbi<'fcx> for JsonbText {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the caller guarantees a non-null jsonb argument.
        unsafe {
            arg.unbox_arg_using_from_datum()
                .unwrap_or_else(|| panic!("argument {index} must not be null"))
        }
    }
}
