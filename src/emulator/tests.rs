//! Router-level tests of the emulator.
