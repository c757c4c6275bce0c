//! The files vxlab renders from `templates/`: domain, network, pool and volume XML, cloud-init documents and the image
//! build script. The templates are built into the binary. Autoescaping covers the XML;
//! cloud-init values go through `json_encode` (a JSON string is a YAML string); shell values
//! through the `sh` filter, which quotes them for a POSIX shell.

use std::collections::HashMap;
use std::sync::OnceLock;

use tera::{Context, Tera, Value};

const TEMPLATES: [(&str, &str); 9] = [
    ("domain.xml", include_str!("../templates/domain.xml")),
    ("network.xml", include_str!("../templates/network.xml")),
    ("pool.xml", include_str!("../templates/pool.xml")),
    ("volume.xml", include_str!("../templates/volume.xml")),
    ("user-data", include_str!("../templates/user-data")),
    ("meta-data", include_str!("../templates/meta-data")),
    (
        "network-config",
        include_str!("../templates/network-config"),
    ),
    (
        "image-build.sh",
        include_str!("../templates/image-build.sh"),
    ),
    (
        "iproute2-build.sh",
        include_str!("../templates/iproute2-build.sh"),
    ),
];

fn sh(value: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(Value::String(crate::plan::shell_quote(&text)))
}

fn tera() -> &'static Tera {
    static TERA: OnceLock<Tera> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut t = Tera::default();
        t.add_raw_templates(TEMPLATES).expect("templates parse");
        // Only the XML is escaped as XML; the others are escaped by their own filters.
        t.autoescape_on(vec!["domain.xml", "network.xml", "pool.xml", "volume.xml"]);
        t.register_filter("sh", sh);
        t
    })
}

/// Renders template `name` with `values`.
pub fn render(name: &str, values: &impl serde::Serialize) -> String {
    let ctx = Context::from_serialize(values).expect("template values serialize to a map");
    tera()
        .render(name, &ctx)
        .unwrap_or_else(|e| panic!("template {name}: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shell_values_are_quoted() {
        let s = render(
            "image-build.sh",
            &json!({"dir": "/tmp/a b", "suite": "bookworm", "mirror": "http://x/'; rm -rf /",
                "build_tools": ["gcc"]}),
        );
        assert!(s.contains("out='/tmp/a b'"));
        assert!(s.contains("mirror='http://x/'\\''; rm -rf /'"));
    }
}
