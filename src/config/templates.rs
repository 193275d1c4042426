//! The template dialect prompts are written in: MiniJinja, sandboxed.
//!
//! Owns: the one [`environment`] every prompt template is compiled in, so that `weir check`
//! (validation) accepts exactly what serving renders, and the limits of a render.
//! A template can use variables, conditionals, loops, filters and macros. It cannot read a
//! file or another template (no loader, and `include`/`import`/`extends` are not compiled in),
//! cannot see the process environment, and cannot dump its own state (`debug()` is removed).
//! Printing or iterating a variable that is not set is an error; testing it (`{% if x %}`)
//! is not. Blocks trim the newline after them and the spaces before them, so a loop written
//! one tag per line renders no stray blank lines.
//! Must not: know about requests or HTTP; rendering a request's prompt is `crate::prompts`'s.

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

/// Fuel for one render: bounds both the steps a template takes and what it allocates
/// (about 64 bytes per unit, so some 32 MB) whatever the variables a client sends.
pub const RENDER_FUEL: u64 = 500_000;

/// Most bytes the rendered messages of one prompt may add up to.
pub const MAX_RENDERED_BYTES: usize = 4 << 20;

/// Globals a template may use without declaring them.
pub const GLOBALS: [&str; 3] = ["range", "dict", "namespace"];

/// A sandboxed environment with no templates in it.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.remove_global("debug");
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_fuel(Some(RENDER_FUEL));
    if let Ok(syntax) = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build() {
        env.set_syntax(syntax);
    }
    env
}

/// An error as a person reads it: MiniJinja's message, with the template line when the
/// template has more than one.
pub fn describe(err: &minijinja::Error, source: &str) -> String {
    let what = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    match err.line() {
        Some(line) if source.contains('\n') => format!("{what} (template line {line})"),
        _ => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, ctx: minijinja::Value) -> Result<String, String> {
        let env = environment();
        let template = env.template_from_str(source).map_err(|e| describe(&e, source))?;
        template.render(ctx).map_err(|e| describe(&e, source))
    }

    #[test]
    fn variables_conditionals_and_loops_render() {
        let ctx = minijinja::context! { name => "weir", items => vec!["a", "b"], formal => true };
        let out =
            render("{% if formal %}Dear {{ name }}{% endif %}:\n{% for i in items %}\n- {{ i }}\n{% endfor %}", ctx);
        assert_eq!(out.as_deref(), Ok("Dear weir:\n- a\n- b\n"));
    }

    #[test]
    fn printing_an_unset_variable_fails_but_testing_it_does_not() {
        assert!(render("{{ missing }}", minijinja::context! {}).is_err());
        assert_eq!(render("{% if missing %}x{% endif %}ok", minijinja::context! {}).as_deref(), Ok("ok"));
    }

    #[test]
    fn no_include_no_debug_no_html_escaping() {
        assert!(render("{% include 'x' %}", minijinja::context! {}).is_err());
        assert!(render("{{ debug() }}", minijinja::context! {}).is_err());
        assert_eq!(render("{{ s }}", minijinja::context! { s => "<b>&" }).as_deref(), Ok("<b>&"));
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        let err = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            minijinja::context! {},
        );
        assert!(err.is_err_and(|e| e.contains("fuel")), "fuel stops it");
    }
}
