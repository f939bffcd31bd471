//! `#[derive(Signature)]`: read the struct, check what can be checked at
//! compile time, generate the inputs and outputs structs and the
//! `TypedSignature` impl.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, GenericParam, Ident, LitStr, Meta, Type};

use crate::attrs::{Errors, doc_attrs, doc_text, unraw};
use crate::types::owned;

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Input,
    Output,
}

/// What a field carries beyond its Rust type.
enum Extra {
    None,
    Kind(Kind),
    Literal(Vec<String>),
}

#[derive(Clone, Copy)]
enum Kind {
    Probability,
    Confidence,
    Embedding,
    ReasoningChain,
}

impl Kind {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "probability" => Some(Self::Probability),
            "confidence" | "confidence_score" => Some(Self::Confidence),
            "embedding" => Some(Self::Embedding),
            "reasoning_chain" => Some(Self::ReasoningChain),
            _ => None,
        }
    }
}

struct SigField<'a> {
    ident: &'a Ident,
    attrs: &'a [Attribute],
    role: Role,
    wire_name: String,
    name_span: Span,
    declared: &'a Type,
    ty: Type,
    description: Option<String>,
    extra: Extra,
}

/// Options of `#[input(...)]` / `#[output(...)]`.
#[derive(Default)]
struct FieldOptions {
    name: Option<LitStr>,
    desc: Option<LitStr>,
    kind: Option<(Kind, Span)>,
    literal: Option<(Vec<String>, Span)>,
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            input.ident.span(),
            "#[derive(Signature)] needs a struct with named fields, each marked #[input] or #[output]",
        ));
    };
    let Fields::Named(named) = &data.fields else {
        return Err(syn::Error::new(
            input.ident.span(),
            "#[derive(Signature)] needs named fields, each marked #[input] or #[output]",
        ));
    };
    let mut errors = Errors::default();
    for param in &input.generics.params {
        if !matches!(param, GenericParam::Lifetime(_)) {
            errors.push(syn::Error::new(
                param.span(),
                "a signature struct cannot be generic over types or constants",
            ));
        }
    }
    let (sig_name, instructions) = struct_options(input, &mut errors);

    let mut fields = Vec::new();
    let mut all_read = true;
    for field in &named.named {
        match read_field(field) {
            Ok(f) => fields.push(f),
            Err(e) => {
                all_read = false;
                errors.push(e);
            }
        }
    }
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for f in &fields {
        if seen.insert(f.wire_name.as_str(), ()).is_some() {
            errors.push(syn::Error::new(
                f.name_span,
                format!(
                    "field name `{}` is used twice (input and output names must all differ)",
                    f.wire_name
                ),
            ));
        }
    }
    if all_read && !fields.iter().any(|f| f.role == Role::Output) {
        errors.push(syn::Error::new(
            input.ident.span(),
            "a signature needs at least one #[output] field",
        ));
    }
    errors.finish()?;
    Ok(generate(input, &sig_name, &instructions, &fields))
}

fn struct_options(input: &DeriveInput, errors: &mut Errors) -> (LitStr, String) {
    let mut name = LitStr::new(&unraw(&input.ident), input.ident.span());
    let mut instructions = doc_text(&input.attrs).unwrap_or_default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("dspex")) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                name = meta.value()?.parse()?;
            } else if meta.path.is_ident("instructions") {
                instructions = meta.value()?.parse::<LitStr>()?.value();
            } else {
                return Err(meta.error("expected `name = \"...\"` or `instructions = \"...\"`"));
            }
            Ok(())
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    (name, instructions)
}

fn read_field(field: &syn::Field) -> syn::Result<SigField<'_>> {
    let ident = field.ident.as_ref().expect("named field");
    let mut role = None;
    let mut options = FieldOptions::default();
    for attr in &field.attrs {
        let this = if attr.path().is_ident("input") {
            Role::Input
        } else if attr.path().is_ident("output") {
            Role::Output
        } else {
            continue;
        };
        if role.is_some() {
            return Err(syn::Error::new(
                attr.span(),
                "a field is either #[input] or #[output], once",
            ));
        }
        role = Some(this);
        if let Meta::List(_) = &attr.meta {
            options = field_options(attr)?;
        } else if let Meta::NameValue(nv) = &attr.meta {
            return Err(syn::Error::new(
                nv.span(),
                "write #[input] or #[input(name = \"...\", desc = \"...\", kind = \"...\", literal = \"...\")]",
            ));
        }
    }
    let Some(role) = role else {
        return Err(syn::Error::new(
            ident.span(),
            format!("field `{ident}` needs #[input] or #[output]"),
        ));
    };
    let (ty, _) = owned(&field.ty)?;
    let (wire_name, name_span) = match &options.name {
        Some(lit) => (lit.value(), lit.span()),
        None => (unraw(ident), ident.span()),
    };
    let extra = match (options.kind, options.literal) {
        (Some(_), Some((_, span))) => {
            return Err(syn::Error::new(
                span,
                "a field has a `kind` or a `literal`, not both",
            ));
        }
        (Some((kind, _)), None) => Extra::Kind(kind),
        (None, Some((members, _))) => Extra::Literal(members),
        (None, None) => Extra::None,
    };
    Ok(SigField {
        ident,
        attrs: &field.attrs,
        role,
        wire_name,
        name_span,
        declared: &field.ty,
        ty,
        description: options
            .desc
            .map(|d| d.value())
            .or_else(|| doc_text(&field.attrs)),
        extra,
    })
}

fn field_options(attr: &Attribute) -> syn::Result<FieldOptions> {
    let mut options = FieldOptions::default();
    attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("name") {
            options.name = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("desc") {
            options.desc = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("kind") {
            let lit: LitStr = meta.value()?.parse()?;
            let kind = Kind::from_name(&lit.value()).ok_or_else(|| {
                syn::Error::new(
                    lit.span(),
                    "unknown kind; expected \"probability\", \"confidence\", \
                     \"confidence_score\", \"embedding\" or \"reasoning_chain\"",
                )
            })?;
            options.kind = Some((kind, lit.span()));
        } else if meta.path.is_ident("literal") {
            let lit: LitStr = meta.value()?.parse()?;
            options.literal = Some((literal_members(&lit)?, lit.span()));
        } else {
            return Err(meta.error("unknown option; expected `name`, `desc`, `kind` or `literal`"));
        }
        Ok(())
    })?;
    Ok(options)
}

fn literal_members(lit: &LitStr) -> syn::Result<Vec<String>> {
    let mut members: Vec<String> = Vec::new();
    for member in lit.value().split('|').map(str::trim) {
        if member.is_empty() {
            return Err(syn::Error::new(
                lit.span(),
                "literal members are separated by `|` and cannot be empty",
            ));
        }
        if members.iter().any(|m| m == member) {
            return Err(syn::Error::new(
                lit.span(),
                format!("literal member `{member}` appears twice"),
            ));
        }
        members.push(member.to_owned());
    }
    Ok(members)
}

fn generate(
    input: &DeriveInput,
    sig_name: &LitStr,
    instructions: &str,
    fields: &[SigField<'_>],
) -> TokenStream {
    let ident = &input.ident;
    let vis = &input.vis;
    let inputs_ident = format_ident!("{}Inputs", ident);
    let outputs_ident = format_ident!("{}Outputs", ident);
    let private = quote!(::dspex::signature::__private);
    let (inputs, outputs): (Vec<&SigField<'_>>, Vec<&SigField<'_>>) =
        fields.iter().partition(|f| f.role == Role::Input);

    let struct_def = |name: &Ident, fields: &[&SigField<'_>], side: &str| {
        let doc = format!("The {side}s of [`{ident}`] (generated by `#[derive(Signature)]`).");
        let members = fields.iter().map(|f| {
            let field_ident = f.ident;
            let ty = &f.ty;
            let wire_name = &f.wire_name;
            let docs = doc_attrs(f.attrs);
            let doc = if docs.is_empty() {
                let text = format!("The `{wire_name}` {side}.");
                quote!(#[doc = #text])
            } else {
                quote!(#(#docs)*)
            };
            quote! {
                #doc
                #[serde(rename = #wire_name)]
                #vis #field_ident: #ty
            }
        });
        quote! {
            #[doc = #doc]
            #[derive(
                ::core::fmt::Debug,
                ::core::clone::Clone,
                ::core::cmp::PartialEq,
                ::dspex::signature::__private::serde::Serialize,
                ::dspex::signature::__private::serde::Deserialize,
            )]
            #[serde(crate = "::dspex::signature::__private::serde")]
            #vis struct #name {
                #(#members,)*
            }
        }
    };
    let inputs_struct = struct_def(&inputs_ident, &inputs, "input");
    let outputs_struct = struct_def(&outputs_ident, &outputs, "output");

    // Every token of a check carries the name's span, so a failing check
    // points at the field (or at its `name = "..."`).
    let name_checks = fields.iter().map(|f| {
        let name = LitStr::new(&f.wire_name, f.name_span);
        quote_spanned! {f.name_span=>
            const _: () = ::dspex::signature::__private::assert_field_name(#name);
        }
    });
    let sig_name_check = quote_spanned! {sig_name.span()=>
        const _: () = ::dspex::signature::__private::assert_signature_name(#sig_name);
    };
    let input_exprs = inputs.iter().map(|f| field_expr(f, &private));
    let output_exprs = outputs.iter().map(|f| field_expr(f, &private));

    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let owned_only = input.generics.params.is_empty()
        && fields
            .iter()
            .all(|f| owned(f.declared).map(|(_, r)| !r).unwrap_or(false));
    let conversions = owned_only.then(|| {
        let in_names: Vec<&Ident> = inputs.iter().map(|f| f.ident).collect();
        let out_names: Vec<&Ident> = outputs.iter().map(|f| f.ident).collect();
        quote! {
            impl ::core::convert::From<(#inputs_ident, #outputs_ident)> for #ident {
                fn from((inputs, outputs): (#inputs_ident, #outputs_ident)) -> Self {
                    Self {
                        #(#in_names: inputs.#in_names,)*
                        #(#out_names: outputs.#out_names,)*
                    }
                }
            }

            impl ::core::convert::From<#ident> for (#inputs_ident, #outputs_ident) {
                fn from(value: #ident) -> Self {
                    (
                        #inputs_ident { #(#in_names: value.#in_names,)* },
                        #outputs_ident { #(#out_names: value.#out_names,)* },
                    )
                }
            }
        }
    });

    let all_names: Vec<&Ident> = fields.iter().map(|f| f.ident).collect();
    quote! {
        #inputs_struct
        #outputs_struct
        #(#name_checks)*
        #sig_name_check

        impl #impl_generics ::dspex::signature::TypedSignature for #ident #ty_generics #where_clause {
            type Inputs = #inputs_ident;
            type Outputs = #outputs_ident;

            fn signature() -> ::dspex::signature::Signature {
                static SIGNATURE: ::std::sync::OnceLock<::dspex::signature::Signature> =
                    ::std::sync::OnceLock::new();
                SIGNATURE
                    .get_or_init(|| {
                        #private::build(
                            #sig_name,
                            #instructions,
                            ::std::vec![#(#input_exprs),*],
                            ::std::vec![#(#output_exprs),*],
                        )
                    })
                    .clone()
            }
        }

        // Reads and builds the declaring struct, which is otherwise only a
        // declaration: no "never constructed" or "never read" warnings for it.
        impl #impl_generics #private::Declaration for #ident #ty_generics #where_clause {
            fn rebuild(self) -> Self {
                Self { #(#all_names: self.#all_names,)* }
            }
        }

        #conversions
    }
}

fn field_expr(f: &SigField<'_>, private: &TokenStream) -> TokenStream {
    let name = &f.wire_name;
    let ty = &f.ty;
    let desc = match &f.description {
        Some(d) => quote!(::core::option::Option::Some(#d)),
        None => quote!(::core::option::Option::None),
    };
    let span = f.declared.span();
    match &f.extra {
        Extra::None => quote_spanned!(span=> #private::field::<#ty>(#name, #desc)),
        Extra::Literal(members) => {
            quote_spanned!(span=> #private::literal_field::<#ty>(#name, #desc, &[#(#members),*]))
        }
        Extra::Kind(Kind::Probability) => quote_spanned!(span=>
            #private::float_kind_field::<#ty>(#name, #desc, ::dspex::signature::FieldKind::Probability)
        ),
        Extra::Kind(Kind::Confidence) => quote_spanned!(span=>
            #private::float_kind_field::<#ty>(#name, #desc, ::dspex::signature::FieldKind::ConfidenceScore)
        ),
        Extra::Kind(Kind::Embedding) => {
            quote_spanned!(span=> #private::embedding_field::<#ty>(#name, #desc))
        }
        Extra::Kind(Kind::ReasoningChain) => {
            quote_spanned!(span=> #private::reasoning_chain_field::<#ty>(#name, #desc))
        }
    }
}
