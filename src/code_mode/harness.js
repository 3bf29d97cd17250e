// Sets up the globals of one code-mode run and returns the function that runs the program.
//
// It runs before the program, so it captures every built-in it relies on: a program that
// replaces JSON.parse or String afterwards changes nothing here. The host functions are passed in
// as arguments and never become globals, so a program can reach the host only through `tools`
// and `console`.
(function (hostCall, hostLog, bindingsJson) {
  "use strict";
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const ErrorType = Error;
  const freeze = Object.freeze;
  const create = Object.create;
  const defineProperty = Object.defineProperty;
  const toText = String;
  const AsyncFunction = (async function () {}).constructor;

  // Never throws: a thrown value may have a throwing getter or toString.
  function describe(error) {
    try {
      if (error === null || error === undefined) return toText(error);
      if (typeof error === "object" && typeof error.message === "string") {
        const name = typeof error.name === "string" ? error.name : "Error";
        return name + ": " + error.message;
      }
      return toText(error);
    } catch (_) {
      return "an exception that cannot be described";
    }
  }

  function bind(index) {
    return freeze(async function (args) {
      let text;
      try {
        text = stringify(args === undefined ? {} : args);
      } catch (error) {
        throw new ErrorType("the arguments cannot be turned into JSON: " + describe(error));
      }
      const reply = parse(await hostCall(index, text === undefined ? "null" : text));
      if (reply.ok) return reply.value;
      throw new ErrorType(reply.error);
    });
  }

  const tools = create(null);
  const bindings = parse(bindingsJson);
  for (let index = 0; index < bindings.length; index++) {
    const server = bindings[index][0];
    const tool = bindings[index][1];
    if (tools[server] === undefined) {
      defineProperty(tools, server, { value: create(null), enumerable: true });
    }
    defineProperty(tools[server], tool, { value: bind(index), enumerable: true });
  }
  for (const server of Object.keys(tools)) freeze(tools[server]);
  freeze(tools);

  function format(values) {
    let line = "";
    for (let index = 0; index < values.length; index++) {
      const value = values[index];
      let text;
      try {
        text = typeof value === "string" ? value : stringify(value);
        if (text === undefined) text = toText(value);
      } catch (_) {
        text = describe(value);
      }
      line += (index === 0 ? "" : " ") + text;
    }
    return line;
  }

  const console = create(null);
  for (const level of ["log", "info", "warn", "error", "debug"]) {
    defineProperty(console, level, {
      value: freeze(function () {
        hostLog(level, format(arguments));
      }),
      enumerable: true,
    });
  }
  freeze(console);
  defineProperty(globalThis, "tools", { value: tools });
  defineProperty(globalThis, "console", { value: console });

  return async function (code) {
    let program;
    try {
      program = new AsyncFunction(code);
    } catch (error) {
      return stringify({ status: "syntax", error: describe(error) });
    }
    let value;
    try {
      value = await program();
    } catch (error) {
      return stringify({ status: "thrown", error: describe(error), null_thrown: error === null });
    }
    let text;
    try {
      text = stringify(value === undefined ? null : value);
    } catch (error) {
      return stringify({ status: "not_json", error: describe(error) });
    }
    return '{"status":"ok","value":' + (text === undefined ? "null" : text) + "}";
  };
});
