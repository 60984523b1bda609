/**
 * The secret values this process knows, so that nothing it prints or logs
 * shows one: every secret resolved from a config is registered, and any text
 * that contains one has it replaced by "***" (defence in depth: messages
 * never include secrets on purpose). A leaf, for the config that registers
 * them and for the output, the process runner and the build log that redact.
 */
const secrets = new Set<string>();

export function registerSecret(value: string): void {
  // Shorter values would redact ordinary words; validation requires at least 8 characters of every secret.
  if (value.length >= 8) secrets.add(value);
}

export function redact(text: string): string {
  let out = text;
  for (const s of secrets) if (out.includes(s)) out = out.split(s).join("***");
  return out;
}
