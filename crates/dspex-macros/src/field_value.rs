//! `#[derive(FieldValue)]` on a fieldless enum: `literal[...]` of the
//! variant names as serde writes them.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, LitStr};

use crate::attrs::{Errors, unraw};

/// What `#[serde(...)]` says about names.
#[derive(Default)]
struct SerdeNames {
    rename: Option<LitStr>,
    rename_all: Option<LitStr>,
    skip: bool,
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new(
            input.ident.span(),
            "#[derive(FieldValue)] needs an enum of unit variants (it becomes a literal type); \
             for other types implement dspex::FieldValue by hand",
        ));
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(FieldValue)] does not support generic enums",
        ));
    }
    let mut errors = Errors::default();
    let on_enum = serde_names(&input.attrs, &mut errors);
    let rule = on_enum.rename_all.as_ref().and_then(|lit| {
        let rule = RenameRule::from_name(&lit.value());
        if rule.is_none() {
            errors.push(syn::Error::new(
                lit.span(),
                "unknown rename_all rule; expected one of lowercase, UPPERCASE, PascalCase, \
                 camelCase, snake_case, SCREAMING_SNAKE_CASE, kebab-case, SCREAMING-KEBAB-CASE",
            ));
        }
        rule
    });
    let mut members: Vec<String> = Vec::new();
    for variant in &data.variants {
        if !matches!(variant.fields, Fields::Unit) {
            errors.push(syn::Error::new(
                variant.span(),
                "#[derive(FieldValue)] needs unit variants (a literal is a choice of strings)",
            ));
            continue;
        }
        let names = serde_names(&variant.attrs, &mut errors);
        if names.skip {
            continue;
        }
        let name = match (&names.rename, rule) {
            (Some(lit), _) => lit.value(),
            (None, Some(rule)) => rule.apply(&unraw(&variant.ident)),
            (None, None) => unraw(&variant.ident),
        };
        if members.contains(&name) {
            errors.push(syn::Error::new(
                variant.span(),
                format!("two variants are both named `{name}`"),
            ));
        }
        members.push(name);
    }
    if members.is_empty() {
        errors.push(syn::Error::new(
            input.ident.span(),
            "a literal needs at least one variant",
        ));
    }
    errors.finish()?;
    let ident = &input.ident;
    Ok(quote! {
        impl ::dspex::signature::FieldValue for #ident {
            fn field_type() -> ::dspex::signature::FieldType {
                ::dspex::signature::__private::literal(&[#(#members),*])
            }
        }
    })
}

/// Reads the name-related parts of `#[serde(...)]`, rejecting
/// representations that are not a plain string.
fn serde_names(attrs: &[Attribute], errors: &mut Errors) -> SerdeNames {
    let mut names = SerdeNames::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let result = attr.parse_nested_meta(|meta| {
            let key = meta.path.get_ident().map(ToString::to_string);
            match key.as_deref() {
                Some("rename") | Some("rename_all") if meta.input.peek(syn::token::Paren) => {
                    Err(meta.error(
                        "FieldValue needs one name per variant: use `rename = \"...\"` \
                         rather than separate serialize/deserialize names",
                    ))
                }
                Some("rename") => {
                    names.rename = Some(meta.value()?.parse()?);
                    Ok(())
                }
                Some("rename_all") => {
                    names.rename_all = Some(meta.value()?.parse()?);
                    Ok(())
                }
                Some("skip") => {
                    names.skip = true;
                    Ok(())
                }
                Some("tag") | Some("content") | Some("untagged") => Err(meta.error(
                    "FieldValue needs variants serialized as plain strings \
                     (no tag, content or untagged)",
                )),
                _ => skip_value(&meta),
            }
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    names
}

/// Consumes whatever an unrelated serde option carries.
fn skip_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Lit>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip_value(&inner))?;
    }
    Ok(())
}

/// serde's `rename_all` rules, as applied to variant names.
#[derive(Clone, Copy)]
enum RenameRule {
    Lower,
    Upper,
    Pascal,
    Camel,
    Snake,
    ScreamingSnake,
    Kebab,
    ScreamingKebab,
}

impl RenameRule {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "lowercase" => Self::Lower,
            "UPPERCASE" => Self::Upper,
            "PascalCase" => Self::Pascal,
            "camelCase" => Self::Camel,
            "snake_case" => Self::Snake,
            "SCREAMING_SNAKE_CASE" => Self::ScreamingSnake,
            "kebab-case" => Self::Kebab,
            "SCREAMING-KEBAB-CASE" => Self::ScreamingKebab,
            _ => return None,
        })
    }

    fn apply(self, variant: &str) -> String {
        let snake = || {
            let mut out = String::new();
            for (i, c) in variant.chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    out.push('_');
                }
                out.extend(c.to_lowercase());
            }
            out
        };
        match self {
            Self::Lower => variant.to_ascii_lowercase(),
            Self::Upper => variant.to_ascii_uppercase(),
            Self::Pascal => variant.to_owned(),
            Self::Camel => {
                let mut chars = variant.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_lowercase().chain(chars).collect()
                })
            }
            Self::Snake => snake(),
            Self::ScreamingSnake => snake().to_ascii_uppercase(),
            Self::Kebab => snake().replace('_', "-"),
            Self::ScreamingKebab => snake().to_ascii_uppercase().replace('_', "-"),
        }
    }
}
