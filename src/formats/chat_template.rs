//! A model's own chat template: the Jinja text in `tokenizer_config.json` (`chat_template`) or
//! in GGUF metadata (`tokenizer.chat_template`), rendered as transformers' `apply_chat_template`
//! renders it.
//!
//! transformers compiles templates in a Jinja2 sandbox with `trim_blocks` and `lstrip_blocks`,
//! the `loopcontrols` extension, a `raise_exception(message)` function, `strftime_now(format)`
//! (the local time through Python's `strftime`) and a `tojson` filter that is Python's
//! `json.dumps(x, ensure_ascii=False, ...)` (Jinja's own escapes HTML characters). The template
//! sees `messages` (dicts with `role` and `content`), `tools` and `documents` (None),
//! `add_generation_prompt`, the special tokens by name (`bos_token`, `eos_token`, ...) and any
//! extra keyword arguments. minijinja, the engine Hugging Face's Rust servers use, is set up the
//! same way here; minijinja-contrib's `pycompat` supplies the Python string and dict methods
//! templates call (`.strip()`, `.startswith()`, `.split()`, `.items()`, ...).

use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// The name the template is registered under in its environment.
const NAME: &str = "chat_template";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// A compiled chat template and the special tokens it is rendered with.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    source: String,
    /// Where the template came from, for error messages (`dir/tokenizer_config.json:
    /// chat_template`).
    origin: String,
    /// `bos_token`, `eos_token`, ... as the template sees them.
    special: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("chars", &self.source.len())
            .field("special", &self.special)
            .finish()
    }
}

impl PartialEq for ChatTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.special == other.special
    }
}

impl Eq for ChatTemplate {}

impl ChatTemplate {
    /// Compiles `source`; `special` are the special tokens by name (`("bos_token", "<s>")`).
    /// A syntax error names `origin` and the line.
    pub fn new(source: &str, origin: impl Into<String>, special: &[(&str, &str)]) -> Result<ChatTemplate> {
        let origin = origin.into();
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_error(&origin, "configuring the Jinja syntax", &e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| template_error(&origin, "compiling the template", &e))?;
        let special = special.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok(ChatTemplate { env: Arc::new(env), source: source.to_string(), origin, special })
    }

    /// The Jinja text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The conversation as text, ending with the assistant's header when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &[])
    }

    /// [`render`](Self::render) with extra template variables (transformers' `**kwargs`, e.g.
    /// Llama 3.1's `date_string`); they override the special tokens of the same name.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &[(&str, &str)],
    ) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_pairs([("role", Value::from(m.role.as_str())), ("content", Value::from(&m.content))]))
            .collect();
        let mut vars: Vec<(String, Value)> = self.special.iter().map(|(k, v)| (k.clone(), Value::from(v))).collect();
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), Value::from(*v))));
        vars.push(("messages".into(), Value::from(messages)));
        vars.push(("tools".into(), Value::from(())));
        vars.push(("documents".into(), Value::from(())));
        vars.push(("add_generation_prompt".into(), Value::from(add_generation_prompt)));
        let template = self.env.get_template(NAME).map_err(|e| template_error(&self.origin, "loading", &e))?;
        template.render(Value::from_pairs(vars)).map_err(|e| template_error(&self.origin, "rendering", &e))
    }
}

/// Gemma's turn format, for the text content kiln's records have: the template Google ships in
/// Gemma 3's tokenizer_config.json less its image branch (a system message becomes the first
/// user turn's opening paragraph; roles must alternate; the assistant is `model`). Built in
/// because Gemma GGUF files carry no `tokenizer.chat_template`.
pub const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}"#;

/// The template kiln uses for a GGUF architecture whose files carry none (`gemma3`).
pub fn builtin_template(architecture: &str) -> Option<&'static str> {
    match architecture {
        "gemma" | "gemma2" | "gemma3" => Some(GEMMA_TEMPLATE),
        _ => None,
    }
}

/// How records become token sequences: the model's chat template with the ids around it, or,
/// for a model without one, plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptFormat {
    /// No template. Text is `bos? text eos`; a completion is `bos? prompt completion eos`, the
    /// two strings joined verbatim (put any separator in the data). Chat records are refused.
    Plain { bos: Option<u32>, eos: u32 },
    /// The model's chat template. Chats, and completions as a user turn and an assistant turn,
    /// are rendered by it and tokenized as transformers' `apply_chat_template(tokenize=True)`
    /// does (no special tokens added: the template writes its own, bos included). A text record
    /// is `bos? text eos`. `end_of_turn` is the special token the template closes an assistant
    /// turn with (`<|im_end|>`, `<|eot_id|>`, `<|end|>`, or eos itself).
    Chat { template: ChatTemplate, bos: Option<u32>, eos: u32, end_of_turn: u32 },
}

impl PromptFormat {
    /// The template's format; `end_of_turn` is found by rendering a probe exchange and taking
    /// the first special token of `tokenizer` that follows the assistant's text (eos when none
    /// does, or when the template cannot render the probe).
    pub fn chat(template: ChatTemplate, tokenizer: &Tokenizer, bos: Option<u32>, eos: u32) -> PromptFormat {
        const ANSWER: &str = "kiln probe answer";
        let probe = [Message::new(Role::User, "kiln probe question"), Message::new(Role::Assistant, ANSWER)];
        let end_of_turn = template
            .render(&probe, false)
            .ok()
            .and_then(|text| {
                let after = &text[text.find(ANSWER)? + ANSWER.len()..];
                let ids = tokenizer.encode(after, false).ok()?.get_ids().to_vec();
                let special = tokenizer.get_added_tokens_decoder();
                ids.into_iter().find(|id| special.get(id).is_some_and(|t| t.special))
            })
            .unwrap_or(eos);
        PromptFormat::Chat { template, bos, eos, end_of_turn }
    }

    /// A model's prompt format: its chat template (`source`, and where it came from) compiled
    /// with its special tokens, or the plain format when it has none, which is said once on
    /// stderr (chats and `--chat` are then refused) naming the model.
    pub fn for_model(
        template: Option<(&str, String)>,
        special: &[(String, String)],
        tokenizer: &Tokenizer,
        bos: Option<u32>,
        eos: u32,
        model: &str,
    ) -> Result<PromptFormat> {
        let Some((source, origin)) = template else {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "note: {model} has no chat template; kiln uses the plain format (text, then eos) and \
                     refuses chat records and --chat"
                )
            });
            return Ok(PromptFormat::Plain { bos, eos });
        };
        let special: Vec<(&str, &str)> = special.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Ok(PromptFormat::chat(ChatTemplate::new(source, origin, &special)?, tokenizer, bos, eos))
    }

    /// The conversation as the template renders it, ending with the assistant's header when
    /// `add_generation_prompt`. Errors for `Plain`.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match self {
            PromptFormat::Plain { .. } => Err(Error::invalid(
                "chat template",
                "this model has no chat template (the plain prompt format): chat records and --chat need one",
            )),
            PromptFormat::Chat { template, .. } => template.render(messages, add_generation_prompt),
        }
    }

    /// The id a text record starts with, when the model adds one.
    pub fn bos(&self) -> Option<u32> {
        match self {
            PromptFormat::Plain { bos, .. } | PromptFormat::Chat { bos, .. } => *bos,
        }
    }

    /// What ends generation: eos, and the end of an assistant turn.
    pub fn stop_tokens(&self) -> Vec<u32> {
        match *self {
            PromptFormat::Plain { eos, .. } => vec![eos],
            PromptFormat::Chat { eos, end_of_turn, .. } if end_of_turn != eos => vec![eos, end_of_turn],
            PromptFormat::Chat { eos, .. } => vec![eos],
        }
    }

    pub fn is_chat(&self) -> bool {
        matches!(self, PromptFormat::Chat { .. })
    }
}

fn template_error(origin: &str, doing: &str, e: &minijinja::Error) -> Error {
    // raise_exception's message is the template's own words: show it alone.
    let message = match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) if detail.starts_with(RAISED) => {
            format!("the chat template refused the conversation: {}", &detail[RAISED.len()..])
        }
        _ => {
            let line = e.line().map(|l| format!(" (template line {l})")).unwrap_or_default();
            format!("{doing}{line}: {e}")
        }
    };
    Error::invalid("chat template", format!("{origin}: {message}"))
}

const RAISED: &str = "raise_exception: ";

/// transformers' `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{message}")))
}

/// transformers' `strftime_now(format)`: now, formatted by Python's `strftime` codes. kiln has
/// no time zone database and uses UTC. Supports `%d %m %y %Y %b %B %a %A %H %I %M %S %p %j %e %%`.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime(&format, secs).map(Value::from)
}

/// `format` for the UTC time `secs` after 1970-01-01.
pub(crate) fn strftime(format: &str, secs: i64) -> std::result::Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3)
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let (h, m, s) = (sod / 3600, sod / 60 % 60, sod % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let code = chars.next().unwrap_or('%');
        let _ = match code {
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:2}"),
            'm' => write!(out, "{month:02}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'Y' => write!(out, "{year}"),
            'b' => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
            'B' => write!(out, "{}", MONTHS[month as usize - 1]),
            'a' => write!(out, "{}", &DAYS[weekday][..3]),
            'A' => write!(out, "{}", DAYS[weekday]),
            'H' => write!(out, "{h:02}"),
            'I' => write!(out, "{:02}", if h % 12 == 0 { 12 } else { h % 12 }),
            'M' => write!(out, "{m:02}"),
            'S' => write!(out, "{s:02}"),
            'p' => write!(out, "{}", if h < 12 { "AM" } else { "PM" }),
            'j' => write!(out, "{yday:03}"),
            '%' => write!(out, "%"),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: kiln does not support the format code %{other}"),
                ));
            }
        };
    }
    Ok(out)
}

/// (year, month 1-12, day 1-31) of a day count from 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, so `", "` and `": "` between items, non-ASCII text as is, and with an
/// indent one item per line (then `","` between items, as Python does).
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(usize::try_from(v)?)),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let item = v.get_item(&Value::from(0))?;
            let key = v.get_item(&Value::from(1))?;
            (item.as_str().unwrap_or(",").to_string(), key.as_str().unwrap_or(":").to_string())
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let json = PyJson {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    json.write(&mut out, value, 0)?;
    Ok(Value::from_safe_string(out))
}

struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl PyJson {
    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    }

    fn write(&self, out: &mut String, v: &Value, depth: usize) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                let text = v.to_string();
                // Python writes a float with a fraction or exponent (1.0, not 1).
                let is_float = f64::try_from(v.clone()).is_ok() && i64::try_from(v.clone()).is_err();
                if is_float && !text.contains(['.', 'e', 'E', 'i', 'n']) {
                    out.push_str(&text);
                    out.push_str(".0");
                } else {
                    out.push_str(&text);
                }
            }
            ValueKind::String => self.string(out, v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(out, '[', ']', items.len(), depth, |out, i| self.write(out, &items[i], depth + 1))?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.container(out, '{', '}', keys.len(), depth, |out, i| {
                    let key = &keys[i];
                    match key.as_str() {
                        Some(s) => self.string(out, s),
                        None => self.string(out, &key.to_string()),
                    }
                    out.push_str(&self.key_sep);
                    self.write(out, &v.get_item(key)?, depth + 1)
                })?;
            }
            _ => self.string(out, &v.to_string()),
        }
        Ok(())
    }

    fn container(
        &self,
        out: &mut String,
        open: char,
        close: char,
        n: usize,
        depth: usize,
        mut item: impl FnMut(&mut String, usize) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if n == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..n {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            self.newline(out, depth + 1);
            item(out, i)?;
        }
        self.newline(out, depth);
        out.push(close);
        Ok(())
    }

    /// A JSON string as Python escapes it.
    fn string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    /// Gemma's built-in turns: the system message opens the first user turn, the assistant is
    /// `model`, and the generation prompt is `model`'s header.
    #[test]
    fn gemma_template_renders_gemma_turns() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE, "gemma", &[("bos_token", "<bos>")]).unwrap();
        assert_eq!(
            t.render(&conversation(), false).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        );
        assert_eq!(
            t.render(&[Message::new(Role::User, " What is 2+2? ")], true).unwrap(),
            "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
        );
        let e = t.render(&[Message::new(Role::Assistant, "x")], false).unwrap_err().to_string();
        assert!(e.contains("alternate"), "{e}");
        assert_eq!(builtin_template("gemma3"), Some(GEMMA_TEMPLATE));
        assert_eq!(builtin_template("llama"), None);
    }

    fn conversation() -> Vec<Message> {
        vec![
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, "Hello"),
        ]
    }

    #[test]
    fn renders_chatml() -> Result<()> {
        let t = ChatTemplate::new(CHATML, "test", &[])?;
        let text = t.render(&conversation()[..2], true)?;
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        Ok(())
    }

    #[test]
    fn trims_blocks_and_strips_their_indentation_as_transformers_does() -> Result<()> {
        let source = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content | trim }}]\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(source, "test", &[("bos_token", "<s>")])?;
        // jinja2 with trim_blocks + lstrip_blocks: block lines vanish; the final newline of the
        // file is dropped (keep_trailing_newline is false).
        assert_eq!(t.render(&[Message::new(Role::User, " a ")], false)?, "<s>\n[a]\n");
        Ok(())
    }

    #[test]
    fn python_methods_namespace_and_slices_work() -> Result<()> {
        let source = "{% set ns = namespace(n=0) %}{% for m in messages[::-1] %}{% if m.content.startswith('H') %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.n }} {{ messages[0].content.strip('.').upper() }} {{ 'a,b'.split(',') | length }}";
        let t = ChatTemplate::new(source, "test", &[])?;
        assert_eq!(t.render(&conversation(), false)?, "2 BE BRIEF 2");
        Ok(())
    }

    #[test]
    fn raise_exception_names_the_origin_and_the_templates_words() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}";
        let t = ChatTemplate::new(source, "m/tokenizer_config.json: chat_template", &[]).unwrap();
        let e = t.render(&conversation(), false).unwrap_err().to_string();
        assert!(e.contains("m/tokenizer_config.json: chat_template"), "{e}");
        assert!(e.contains("refused the conversation: Conversation roles must alternate user/assistant"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_origin_and_line() {
        let e = ChatTemplate::new("ok\n{% for m in messages %}", "x.gguf: tokenizer.chat_template", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.gguf: tokenizer.chat_template") && e.contains("compiling"), "{e}");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() -> Result<()> {
        let t = ChatTemplate::new(
            "{{ messages[0] | tojson }}|{{ 'é\"\\n' | tojson }}|{{ [1, 2.5, none, true] | tojson }}|{{ {'a': [1]} | tojson(indent=2) }}",
            "test",
            &[],
        )?;
        let out = t.render(&[Message::new(Role::User, "<b>ü</b>")], false)?;
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"<b>ü</b>\"}|\"é\\\"\\n\"|[1, 2.5, null, true]|{\n  \"a\": [\n    1\n  ]\n}"
        );
        Ok(())
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 12:34:56 UTC, a Friday, day 208 of a leap year.
        let t = 1_721_997_296;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "26 Jul 2024");
        assert_eq!(strftime("%A %B %e %H:%M:%S %p %j %y %%", t).unwrap(), "Friday July 26 12:34:56 PM 208 24 %");
        assert_eq!(strftime("%d %b %Y", 0).unwrap(), "01 Jan 1970");
        assert!(strftime("%Q", t).is_err());
    }
}
