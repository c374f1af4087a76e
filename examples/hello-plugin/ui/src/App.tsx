import { useCallback, useEffect, useRef, useState } from "react";

interface AppProps {
  /** Calls the plugin's hello.Greeter/Greet through the host; optional. */
  greet?: () => Promise<string>;
}

// Only a default component is exported from this file so React Fast Refresh
// can hot-swap it while keeping state (the counter survives a label edit).
export default function App({ greet }: AppProps) {
  const [count, setCount] = useState(0);
  const [greeting, setGreeting] = useState("");
  const callId = useRef(0);

  const runGreet = useCallback(async () => {
    if (!greet) return;
    const id = ++callId.current;
    let text: string;
    try {
      text = await greet();
    } catch (err) {
      text = `error: ${err instanceof Error ? err.message : String(err)}`;
    }
    if (id === callId.current) setGreeting(text); // ignore stale replies
  }, [greet]);

  useEffect(() => {
    void runGreet();
  }, [runGreet]);

  return (
    <div style={{ fontFamily: "system-ui, sans-serif", padding: "1rem" }}>
      <p>
        <span data-testid="label">Hello from hello-plugin</span>
      </p>
      <p>
        <button data-testid="counter" onClick={() => setCount((c) => c + 1)}>
          count: {count}
        </button>
      </p>
      <p>
        <button data-testid="greet" onClick={() => void runGreet()}>
          greet
        </button>{" "}
        <output data-testid="greeting">{greeting}</output>
      </p>
    </div>
  );
}
