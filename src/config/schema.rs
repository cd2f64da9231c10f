//! JSON Schema of experiment files, for editors (yaml-language-server).

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::{Experiment, ImageSize, Weights};

/// The JSON Schema of an experiment file, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Experiment);
    serde_json::to_string_pretty(&schema).expect("a schema serialises")
}

impl JsonSchema for ImageSize {
    fn schema_name() -> Cow<'static, str> {
        "ImageSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Pixels: one number for a square, or [height, width]; each 32..4096.",
            "oneOf": [
                { "type": "integer", "minimum": 32, "maximum": 4096 },
                { "type": "array", "items": { "type": "integer", "minimum": 32, "maximum": 4096 },
                  "minItems": 2, "maxItems": 2 }
            ]
        })
    }
}

impl JsonSchema for Weights {
    fn schema_name() -> Cow<'static, str> {
        "Weights".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`imagenet`, `none`, or a path to a .safetensors / .ot / .pth file.",
            "anyOf": [
                { "enum": ["imagenet", "none"] },
                { "type": "string", "pattern": "\\.(safetensors|ot|pth|pt)$" }
            ]
        })
    }
}
