//! Behaviour of schema compilation and validation against the shipped seed schema.
