//! The `fal-ai/video-prompt-generator` input schema, copied from the seed model page: field
//! order, types, defaults and the enum values (`model` uses the page's 13 values, not fal-js's 7).

pub(super) const STYLES: &[&str] = &[
    "Minimalist",
    "Simple",
    "Detailed",
    "Descriptive",
    "Dynamic",
    "Cinematic",
    "Documentary",
    "Animation",
    "Action",
    "Experimental",
];
pub(super) const CAMERA_STYLES: &[&str] = &[
    "None",
    "Steadicam flow",
    "Drone aerials",
    "Handheld urgency",
    "Crane elegance",
    "Dolly precision",
    "VR 360",
    "Multi-angle rig",
    "Static tripod",
    "Gimbal smoothness",
    "Slider motion",
    "Jib sweep",
    "POV immersion",
    "Time-slice array",
    "Macro extreme",
    "Tilt-shift miniature",
    "Snorricam character",
    "Whip pan dynamics",
    "Dutch angle tension",
    "Underwater housing",
    "Periscope lens",
];
pub(super) const CAMERA_DIRECTIONS: &[&str] = &[
    "None",
    "Zoom in",
    "Zoom out",
    "Pan left",
    "Pan right",
    "Tilt up",
    "Tilt down",
    "Orbital rotation",
    "Push in",
    "Pull out",
    "Track forward",
    "Track backward",
    "Spiral in",
    "Spiral out",
    "Arc movement",
    "Diagonal traverse",
    "Vertical rise",
    "Vertical descent",
];
pub(super) const PACINGS: &[&str] = &[
    "None",
    "Slow burn",
    "Rhythmic pulse",
    "Frantic energy",
    "Ebb and flow",
    "Hypnotic drift",
    "Time-lapse rush",
    "Stop-motion staccato",
    "Gradual build",
    "Quick cut rhythm",
    "Long take meditation",
    "Jump cut energy",
    "Match cut flow",
    "Cross-dissolve dreamscape",
    "Parallel action",
    "Slow motion impact",
    "Ramping dynamics",
    "Montage tempo",
    "Continuous flow",
    "Episodic breaks",
];
pub(super) const SPECIAL_EFFECTS: &[&str] = &[
    "None",
    "Practical effects",
    "CGI enhancement",
    "Analog glitches",
    "Light painting",
    "Projection mapping",
    "Nanosecond exposures",
    "Double exposure",
    "Smoke diffusion",
    "Lens flare artistry",
    "Particle systems",
    "Holographic overlay",
    "Chromatic aberration",
    "Digital distortion",
    "Wire removal",
    "Motion capture",
    "Miniature integration",
    "Weather simulation",
    "Color grading",
    "Mixed media composite",
    "Neural style transfer",
];
pub(super) const MODELS: &[&str] = &[
    "anthropic/claude-3.5-sonnet",
    "anthropic/claude-3-5-haiku",
    "anthropic/claude-3-haiku",
    "google/gemini-pro-1.5",
    "google/gemini-flash-1.5",
    "google/gemini-flash-1.5-8b",
    "meta-llama/llama-3.2-1b-instruct",
    "meta-llama/llama-3.2-3b-instruct",
    "meta-llama/llama-3.1-8b-instruct",
    "meta-llama/llama-3.1-70b-instruct",
    "openai/gpt-4o-mini",
    "openai/gpt-4o",
    "deepseek/deepseek-r1",
];
pub(super) const PROMPT_LENGTHS: &[&str] = &["Short", "Medium", "Long"];

/// The type of one schema field.
pub(super) enum Kind {
    Str,
    Enum(&'static [&'static str]),
}

/// One input field: name, type, default (`None` = required), and whether `null` is allowed.
pub(super) struct Field {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    pub(super) default: Option<&'static str>,
    pub(super) nullable: bool,
}

const fn text(name: &'static str, default: Option<&'static str>, nullable: bool) -> Field {
    Field {
        name,
        kind: Kind::Str,
        default,
        nullable,
    }
}

const fn choice(name: &'static str, values: &'static [&'static str], default: &'static str) -> Field {
    Field {
        name,
        kind: Kind::Enum(values),
        default: Some(default),
        nullable: false,
    }
}

/// The seed schema, in the page's field order (errors are reported in this order).
pub(super) const FIELDS: &[Field] = &[
    text("input_concept", None, false),
    choice("style", STYLES, "Simple"),
    choice("camera_style", CAMERA_STYLES, "None"),
    choice("camera_direction", CAMERA_DIRECTIONS, "None"),
    choice("pacing", PACINGS, "None"),
    choice("special_effects", SPECIAL_EFFECTS, "None"),
    text("custom_elements", Some(""), false),
    text("image_url", Some(""), true),
    choice("model", MODELS, "google/gemini-flash-1.5"),
    choice("prompt_length", PROMPT_LENGTHS, "Medium"),
];
