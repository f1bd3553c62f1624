"""The models: the frozen MobileNet backbone with its head, features extracted once into the
store, and the servable model the exports are built from."""
