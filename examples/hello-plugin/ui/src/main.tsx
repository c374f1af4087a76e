// Standalone page (index.html). Vite injects the Fast Refresh preamble into
// index.html itself, so this does not go through entry.tsx.
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import App from "./App";

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App greet={async () => "Hello, world (standalone: no plugin backend)"} />
  </StrictMode>,
);
