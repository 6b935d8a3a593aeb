//! Edges of the overlay rules that the main tests (`schema/tests_overlay.rs`) do not pin, each
//! found by mutation testing (`scripts/mutants schema-overlay`, see TESTING.md).

use super::*;

fn schema() -> Value {
    json!({"type": "object", "properties": {"image_url": {"type": "string"}}})
}

fn image_url(rules: FieldOverlay) -> Overlay {
    Overlay {
        fields: BTreeMap::from([("image_url".to_owned(), rules)]),
    }
}

/// A data-URI size or type rule alone (no `schemes`) still becomes a URL rule.
#[test]
fn a_data_uri_rule_without_schemes_is_still_a_url_rule() {
    let (mut schema, mut urls) = (schema(), BTreeMap::new());
    let size_only = image_url(FieldOverlay {
        data_uri_max_bytes: Some(1024),
        ..FieldOverlay::default()
    });
    apply(&mut schema, &mut urls, &size_only).unwrap();
    assert_eq!(urls["image_url"].data_uri_max_bytes, Some(1024));

    let (mut schema, mut urls) = (self::schema(), BTreeMap::new());
    let types_only = image_url(FieldOverlay {
        data_uri_types: Some(vec!["image/png".into()]),
        ..FieldOverlay::default()
    });
    apply(&mut schema, &mut urls, &types_only).unwrap();
    assert_eq!(urls["image_url"].data_uri_types, Some(vec!["image/png".to_owned()]));
}

/// A later overlay may narrow the data-URI types an earlier one allowed, never widen them.
#[test]
fn a_later_overlay_narrows_data_uri_types_and_cannot_widen_them() {
    let types = |list: &[&str]| {
        image_url(FieldOverlay {
            data_uri_types: Some(list.iter().map(|t| (*t).to_owned()).collect()),
            ..FieldOverlay::default()
        })
    };
    let (mut schema, mut urls) = (schema(), BTreeMap::new());
    apply(&mut schema, &mut urls, &types(&["image/*"])).unwrap();
    apply(&mut schema, &mut urls, &types(&["IMAGE/PNG"])).unwrap();
    assert_eq!(urls["image_url"].data_uri_types, Some(vec!["image/png".to_owned()]));
    let (_, why) = apply(&mut schema, &mut urls, &types(&["image/jpeg"])).unwrap_err();
    assert!(why.contains("`image/jpeg` widens an earlier overlay"), "{why}");
}
