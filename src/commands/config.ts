/** A certificate's end date and the days until then. */
export function describeDate(d: Date): string {
  const days = Math.round((d.getTime() - Date.now()) / 86_400_000);
  return `${d.toISOString().slice(0, 10)} (${days} days)`;
}
