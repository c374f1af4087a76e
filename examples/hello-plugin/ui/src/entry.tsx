// Omniview imports src/entry.ts (the plugin object). This file is for any other host page, on
// another origin, that mounts the UI itself:
//   const { mount } = await import("http://127.0.0.1:<port>/src/entry.tsx");
//   const unmount = mount(element, { greet: () => callGreetSomehow() });
//
// The host page was not served by Vite, so it has no React Fast Refresh
// preamble; import it first (before react-dom evaluates). In a production
// build this import is empty.
import "@vitejs/plugin-react/preamble";
import { createRoot } from "react-dom/client";
import App from "./App";

export interface MountProps {
  greet?: () => Promise<string>;
}

export function mount(element: HTMLElement, props: MountProps = {}): () => void {
  const root = createRoot(element);
  root.render(<App {...props} />);
  return () => root.unmount();
}
