//! Attribute macros for [cable](https://docs.rs/cable-core) channels, used
//! through `cable-core`'s re-exports: `#[cable_core::channel]` on an
//! `impl Channel for YourChannel` block makes each method marked
//! `#[action]` an action of the same name (`#[action(name = "sendMessage")]`
//! for another), and writes `Channel::perform` to dispatch to them.
//!
//! An action method is `async`, takes `&mut self` and the context, and
//! optionally one more argument: the action's data, decoded with serde from
//! the JSON the client sent (its `action` key taken out). It returns
//! `ChannelResult`. Data that does not decode fails with
//! `ChannelError::InvalidData` (logged as such, the action is not run); an
//! action no method has fails with `ChannelError::UnknownAction` (Rails'
//! `Unable to process`). The methods stay callable as ordinary methods.
//!
//! ```
//! use cable_core::{async_trait, channel, Channel, ChannelResult, Context};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Speak {
//!     body: String,
//! }
//!
//! #[derive(Default)]
//! struct ChatChannel;
//!
//! #[channel]
//! #[async_trait]
//! impl Channel for ChatChannel {
//!     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
//!         ctx.stream_from("chat");
//!         Ok(())
//!     }
//!
//!     /// `perform("speak", { body: "hi" })` from the client.
//!     #[action]
//!     async fn speak(&mut self, ctx: &mut Context<'_>, data: Speak) -> ChannelResult {
//!         ctx.broadcast("chat", &serde_json::json!({ "body": data.body })).await
//!     }
//!
//!     /// No data: `perform("typing")`.
//!     #[action]
//!     async fn typing(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
//!         ctx.broadcast("chat", &serde_json::json!({ "typing": true })).await
//!     }
//! }
//! ```
//!
//! `#[channel]` goes above `#[async_trait]` (it adds `#[async_trait]` when
//! it is missing). The string-based `perform` stays for dynamic cases: write
//! it yourself and leave `#[action]` out.
//!
//! # Mistakes and what the compiler says
//! Each is a test case in `tests/ui` with the full message beside it.
//!
//! | mistake | message |
//! | --- | --- |
//! | the data type has no `Deserialize` | `` `Speak` cannot be the data of an #[action]: it does not implement serde's `Deserialize` `` (at the type; note: derive it) |
//! | `fn` instead of `async fn` | `` an #[action] method must be `async fn` `` (also when `#[async_trait]` is above `#[channel]`, which the message says) |
//! | no context argument | `` an #[action] method takes the context next: `ctx: &mut Context<'_>` `` |
//! | two data arguments | `an #[action] method takes one data argument at most (put several values in one struct)` |
//! | `&self` | `` an #[action] method takes `&mut self` first `` |
//! | two actions of one name | `` action `speak` is defined twice (also by `speak`) `` |
//! | `perform` written beside `#[action]`s | `` with #[action] methods, leave `perform` out: #[channel] writes it `` |
//! | `#[channel]` on `impl Chat` | `` #[channel] goes on `impl Channel for YourChannel`, not on an inherent impl `` |
//! | `#[action]` outside a `#[channel]` block | `` #[action] works inside an `impl Channel for …` block marked #[cable_core::channel] `` |
//! | an action returning something else | `` mismatched types: expected `Result<(), ChannelError>` `` at its `->` |
//!
//! # At run time
//! | the client sends | the action | the log (error level) |
//! | --- | --- | --- |
//! | an action no method has | not run | `` Unable to process ChatChannel#"dance"(…) `` (Rails' line) |
//! | data that does not decode | not run | `` Could not execute command from (…) [ChatChannel#"speak": invalid data: missing field `body` (action `speak` takes Speak)] `` |
//! | an error the method returns | ran | `` Could not execute command from (…) [ChatChannel#"speak": …the error…] `` |

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Error, FnArg, ImplItem, ImplItemFn, ItemImpl, LitStr, Type};

/// Makes the `#[action]` methods of an `impl Channel for …` block its
/// actions; see the [crate docs](crate).
#[proc_macro_attribute]
pub fn channel(args: TokenStream, input: TokenStream) -> TokenStream {
    if !args.is_empty() {
        let args = proc_macro2::TokenStream::from(args);
        return Error::new(args.span(), "#[channel] takes no arguments")
            .to_compile_error()
            .into();
    }
    let item = parse_macro_input!(input as ItemImpl);
    match expand(item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Marks an action method inside a `#[cable_core::channel]` block. On its
/// own it is an error: the block's `#[channel]` is what reads it.
#[proc_macro_attribute]
pub fn action(_args: TokenStream, input: TokenStream) -> TokenStream {
    let input = proc_macro2::TokenStream::from(input);
    let mut out = Error::new(
        Span::call_site(),
        "#[action] works inside an `impl Channel for …` block marked #[cable_core::channel]",
    )
    .to_compile_error();
    out.extend(input);
    out.into()
}

/// One action: its client-side name, the method, the data type if any.
struct Action {
    name: String,
    method: syn::Ident,
    data: Option<Type>,
    /// The method's return type, where a wrong one is reported.
    output: Span,
}

fn expand(mut item: ItemImpl) -> syn::Result<proc_macro2::TokenStream> {
    let Some((_, trait_path, _)) = &item.trait_ else {
        return Err(Error::new(
            item.self_ty.span(),
            "#[channel] goes on `impl Channel for YourChannel`, not on an inherent impl",
        ));
    };
    let trait_span = trait_path.span();
    let mut actions: Vec<Action> = Vec::new();
    let mut methods: Vec<ImplItemFn> = Vec::new();
    let mut kept: Vec<ImplItem> = Vec::new();
    let mut perform = None;
    for it in std::mem::take(&mut item.items) {
        match it {
            ImplItem::Fn(mut f) => {
                let Some(at) = f.attrs.iter().position(is_action_attr) else {
                    if f.sig.ident == "perform" {
                        perform = Some(f.sig.ident.span());
                    }
                    kept.push(ImplItem::Fn(f));
                    continue;
                };
                let attr = f.attrs.remove(at);
                let name = action_name(&attr, &f)?;
                let data = check_signature(&f)?;
                if let Some(twin) = actions.iter().find(|a| a.name == name) {
                    return Err(Error::new(
                        f.sig.ident.span(),
                        format!(
                            "action `{name}` is defined twice (also by `{}`)",
                            twin.method
                        ),
                    ));
                }
                actions.push(Action {
                    name,
                    method: f.sig.ident.clone(),
                    data,
                    output: f.sig.output.span(),
                });
                methods.push(f);
            }
            other => kept.push(other),
        }
    }
    if actions.is_empty() {
        return Err(Error::new(
            trait_span,
            "#[channel] found no #[action] method in this block (mark the action methods \
             with #[action], or leave #[channel] out and write `perform`)",
        ));
    }
    if let Some(span) = perform {
        return Err(Error::new(
            span,
            "with #[action] methods, leave `perform` out: #[channel] writes it",
        ));
    }

    let arms = actions.iter().map(|a| {
        let (name, method, out) = (&a.name, &a.method, a.output);
        // A method that returns something else is reported at its `->`.
        match &a.data {
            Some(ty) => {
                let decode = quote_spanned! {ty.span()=>
                    ::cable_core::__private::action_data::<#ty>(action, data)
                };
                let call = quote_spanned! {out=>
                    let done: ::cable_core::ChannelResult = self.#method(ctx, data).await;
                };
                quote! {
                    #name => {
                        let data = #decode?;
                        #call
                        done
                    }
                }
            }
            None => {
                let call = quote_spanned! {out=>
                    let done: ::cable_core::ChannelResult = self.#method(ctx).await;
                };
                quote! { #name => { #call done } }
            }
        }
    });
    let perform = quote! {
        async fn perform(
            &mut self,
            ctx: &mut ::cable_core::Context<'_>,
            action: &str,
            data: ::cable_core::__private::Value,
        ) -> ::cable_core::ChannelResult {
            let _ = &data;
            match action {
                #(#arms)*
                _ => ::core::result::Result::Err(
                    ::cable_core::ChannelError::UnknownAction(::std::borrow::ToOwned::to_owned(action)),
                ),
            }
        }
    };
    item.items = kept;
    item.items.push(syn::parse2(perform)?);
    if !item.attrs.iter().any(is_async_trait_attr) {
        item.attrs
            .push(syn::parse_quote!(#[::cable_core::async_trait]));
    }
    let self_ty = &item.self_ty;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics #self_ty #where_clause {
            #(#methods)*
        }
        #item
    })
}

fn is_action_attr(a: &syn::Attribute) -> bool {
    a.path().is_ident("action")
}

fn is_async_trait_attr(a: &syn::Attribute) -> bool {
    a.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "async_trait")
}

/// The name from `#[action(name = "…")]`, else the method's.
fn action_name(attr: &syn::Attribute, f: &ImplItemFn) -> syn::Result<String> {
    let mut name = f.sig.ident.to_string();
    if matches!(attr.meta, syn::Meta::Path(_)) {
        return Ok(name);
    }
    attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            if lit.value().is_empty() {
                return Err(Error::new(lit.span(), "an action name cannot be empty"));
            }
            name = lit.value();
            Ok(())
        } else {
            Err(meta.error("#[action] takes only `name = \"…\"`"))
        }
    })?;
    Ok(name)
}

/// Checks an action method's signature; returns its data type, if it takes
/// data.
fn check_signature(f: &ImplItemFn) -> syn::Result<Option<Type>> {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(Error::new(
            sig.fn_token.span(),
            "an #[action] method must be `async fn` (if #[async_trait] is above #[channel], \
             put #[channel] first)",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(Error::new(
            sig.generics.span(),
            "an #[action] method cannot be generic: its data type must be known",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_some() => {}
        other => {
            let span = other.map_or(sig.ident.span(), |a| a.span());
            return Err(Error::new(
                span,
                "an #[action] method takes `&mut self` first",
            ));
        }
    }
    match inputs.next() {
        Some(FnArg::Typed(_)) => {}
        _ => {
            return Err(Error::new(
                sig.paren_token.span.join(),
                "an #[action] method takes the context next: `ctx: &mut Context<'_>`",
            ))
        }
    }
    let data = match inputs.next() {
        Some(FnArg::Typed(t)) => Some((*t.ty).clone()),
        _ => None,
    };
    if let Some(extra) = inputs.next() {
        return Err(Error::new(
            extra.span(),
            "an #[action] method takes one data argument at most (put several values in one \
             struct)",
        ));
    }
    Ok(data)
}
