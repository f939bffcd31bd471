//! The syntactic side of field types: shapes that can never be a field are
//! rejected here with a message on the type; `&str` becomes `String` in the
//! generated structs. Everything else is left to the `FieldValue` trait.

use syn::spanned::Spanned;
use syn::{GenericArgument, PathArguments, Type};

/// `ty` with every `&str` replaced by `String`, and whether there was one.
pub(crate) fn owned(ty: &Type) -> syn::Result<(Type, bool)> {
    let mut ty = ty.clone();
    let had_ref = rewrite(&mut ty)?;
    Ok((ty, had_ref))
}

fn rewrite(ty: &mut Type) -> syn::Result<bool> {
    let span = ty.span();
    let unsupported = |what: &str| {
        Err(syn::Error::new(
            span,
            format!(
                "{what} cannot be the type of a signature field; \
                 field types are String, integers, f32/f64, bool, Vec<T>, \
                 HashMap<String, T>, BTreeMap<String, T>, Option<T> and types implementing \
                 dspex::FieldValue"
            ),
        ))
    };
    match ty {
        Type::Reference(r) => {
            let is_str =
                matches!(&*r.elem, Type::Path(p) if p.qself.is_none() && p.path.is_ident("str"));
            if !is_str || r.mutability.is_some() {
                return unsupported("a reference other than `&str`");
            }
            *ty = syn::parse_quote!(::std::string::String);
            Ok(true)
        }
        Type::Path(p) => {
            let mut had_ref = false;
            for segment in &mut p.path.segments {
                if let PathArguments::AngleBracketed(args) = &mut segment.arguments {
                    for arg in &mut args.args {
                        if let GenericArgument::Type(inner) = arg {
                            had_ref |= rewrite(inner)?;
                        }
                    }
                }
            }
            Ok(had_ref)
        }
        Type::Paren(p) => rewrite(&mut p.elem),
        Type::Group(g) => rewrite(&mut g.elem),
        Type::Tuple(t) if t.elems.is_empty() => unsupported("`()`"),
        Type::Tuple(_) => unsupported("a tuple (use a Vec, or several fields)"),
        Type::Array(_) => unsupported("an array (use Vec<T>)"),
        Type::Slice(_) => unsupported("a slice (use Vec<T>)"),
        Type::BareFn(_) => unsupported("a function pointer"),
        Type::TraitObject(_) | Type::ImplTrait(_) => unsupported("a trait object"),
        Type::Ptr(_) => unsupported("a raw pointer"),
        Type::Never(_) => unsupported("`!`"),
        _ => unsupported("this type"),
    }
}
