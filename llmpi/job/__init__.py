"""What a user asks and is told: the job trees and their keys, the errors a user can fix, how a command ends."""
